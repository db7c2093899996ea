"""PCA pruning (one shot, one retraining) against iterative magnitude pruning at the same compression.

For each data set and seed: PCA runs at every tau (recipe ``MODEL_mnist_pca``), and one iterative global
magnitude run of ``--rounds`` geometric rounds to ``--max-sparsity`` with ``--epochs`` retraining epochs per
round, sharing the same dense model. For each tau the table gives PCA's widths, compression, accuracy, the one
retraining and its wall time, beside what magnitude pruning needed to first reach at least the same
compression: rounds (= retrainings), cumulative wall time, and its accuracy there. Wall times exclude the
shared dense training.

    python benchmarks/pca_vs_magnitude.py --model lenet300_100 --datasets mnist,fashion_mnist --seeds 0,1,2 \
        --data-root ../shared/data --jobs 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from prunelab.experiment.compare import mean_std as _pm


def _run(job: tuple) -> dict:
    import torch

    torch.set_num_threads(job[-1])
    from prunelab.experiment import Runner, load_recipe, run_dir_for

    kind, recipe_name, overrides, runs_dir, key, _ = job
    recipe = load_recipe(recipe_name, overrides)
    d = run_dir_for(recipe, runs_dir)
    s = Runner(recipe, d, progress=False, log=lambda m: None).run()
    out = {"kind": kind, "key": key, "summary": s}
    if kind == "pca":
        import json

        for line in (d / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "prune" in rec and "plan" in rec["prune"]:
                out["plan"] = rec["prune"]["plan"]
    print(f"{kind} {key}: {s['pruned_acc']:.4f} at {s['compression_prunable']:.1f}x", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lenet300_100", choices=["lenet300_100", "lenet5"])
    ap.add_argument("--datasets", default="mnist,fashion_mnist")
    ap.add_argument("--taus", default="0.95,0.99,0.999")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=12, help="magnitude baseline: geometric rounds")
    ap.add_argument("--max-sparsity", type=float, default=0.99, help="magnitude baseline: final sparsity")
    ap.add_argument("--epochs", type=int, default=2, help="magnitude baseline: retraining epochs per round")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per job (default: 2 cores / jobs)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    recipe = f"{a.model}_mnist_pca"
    seeds = [int(s) for s in a.seeds.split(",")]
    taus = [float(t) for t in a.taus.split(",")]
    datasets = a.datasets.split(",")
    threads = a.threads or max(1, 2 // a.jobs)

    def base(ds: str, seed: int) -> list[str]:
        out = [f"seed={seed}", f"data.name={ds}"]
        return out + ([f"data.root={a.data_root}"] if ds == "mnist" else [])

    mag = ["prune.method={name: magnitude, allocation: global}", "prune.schedule.name=iterative",
           f"prune.schedule.rounds={a.rounds}", f"prune.sparsity={a.max_sparsity}", f"prune.retrain.epochs={a.epochs}"]
    first = [("magnitude", recipe, base(ds, s) + mag, a.runs_dir, (ds, s, None), threads)
             for ds in datasets for s in seeds]  # trains the shared dense models
    rest = [("pca", recipe, base(ds, s) + [f"prune.method.tau={t}"], a.runs_dir, (ds, s, t), threads)
            for ds in datasets for s in seeds for t in taus]
    results = []
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        for batch in (first, rest):
            results += list(pool.map(_run, batch))
    mags = {r["key"][:2]: r["summary"] for r in results if r["kind"] == "magnitude"}
    lines = [f"# PCA pruning vs iterative magnitude pruning, {a.model}", "", f"Command: `python {' '.join(sys.argv)}`",
             "", f"Seeds {seeds}, mean +- std. Compression over prunable weights (all conv/linear weights). PCA: "
             "one shot, one retraining; magnitude: global threshold, geometric rounds of "
             f"{a.epochs} retraining epochs, read at the first round reaching at least PCA's compression. Wall "
             "times exclude the shared dense training.", "",
             "| data | tau | widths (units kept per layer) | PCA compression | PCA acc % | dense acc % | PCA retrainings | "
             "PCA wall s | magnitude rounds to reach it | magnitude wall s | magnitude acc % there |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds in datasets:
        for t in taus:
            rows = [r for r in results if r["kind"] == "pca" and r["key"][0] == ds and r["key"][2] == t]
            comp, acc, dense, wall, mrounds, mwall, macc = [], [], [], [], [], [], []
            for r in rows:
                s = r["summary"]
                comp.append(s["compression_prunable"])
                acc.append(s["pruned_acc"])
                dense.append(s["dense_acc"])
                wall.append(sum(st["seconds"] for st in s["stages"] if st["stage"] != "dense"))
                m = mags[(ds, r["key"][1])]
                cum = 0.0
                for i, st in enumerate(m["stages"][1:], start=1):
                    cum += st["seconds"]
                    if 1 / max(1 - st["sparsity"], 1e-12) >= s["compression_prunable"] - 1e-9:
                        mrounds.append(i)
                        mwall.append(cum)
                        macc.append(st["test_acc"])
                        break
            widths = " / ".join(
                f"{round(statistics.mean(r['plan'][layer]['kept_units'] for r in rows))}"
                f"/{rows[0]['plan'][layer]['units']}" for layer in rows[0]["plan"])
            reach = (f"{_pm(mrounds, 1, 1)}" if len(mrounds) == len(rows) else
                     f"not reached in {len(mrounds)}/{len(rows)} seeds ({a.rounds} rounds to {a.max_sparsity})")
            lines.append(f"| {ds} | {t:g} | {widths} | {_pm(comp, 1, 1)}x | {_pm(acc, 100)} | {_pm(dense, 100)} | 1 | "
                         f"{_pm(wall, 1, 0)} | {reach} | {_pm(mwall, 1, 0) if mwall else '-'} | "
                         f"{_pm(macc, 100) if macc else '-'} |")
    out = Path(a.out or f"benchmarks/results/pca_vs_magnitude_{a.model}")
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

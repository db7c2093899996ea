"""What the calibration defaults change on a trained model: float32 against float64 statistics and solve, and
sequential against one-pass Wanda, on the small GPT-2 of ``gpt2_pystdlib_dense`` (perplexity on held-out
Python source, and how many mask entries differ from the float64 / one-pass counterpart).

    python benchmarks/calibration_precision.py --runs-dir runs --draws 0 --threads 1 > benchmarks/results/calibration_precision.md

The dense model is the recipe's (trained once, cached in the runs folder; the same one as
``benchmarks/lm_one_shot.py``). A calibration draw is ``samples`` windows of the calibration split in an order
drawn from the draw's seed, the same for every variant of that draw. Sparsity 50 % unstructured and 2:4 over the
transformer blocks' weight matrices (embeddings and the tied output layer stay dense).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

VARIANTS = {  # label: (method spec, calibrate options, the variant it is compared with)
    "wanda, one pass, float64 (before)": ({"name": "wanda", "sequential": False}, {"precision": "float64"}, None),
    "wanda, one pass, float32": ({"name": "wanda", "sequential": False}, {}, "wanda, one pass, float64 (before)"),
    "wanda, sequential, float32 (default)": ({"name": "wanda"}, {}, "wanda, one pass, float32"),
    "sparsegpt, float64 (before)": ({"name": "sparsegpt"}, {"precision": "float64"}, None),
    "sparsegpt, float32 (default)": ({"name": "sparsegpt"}, {}, "sparsegpt, float64 (before)"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--draws", default="0")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="recipe overrides (e.g. for a quick check)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from prunelab import Pruner
    from prunelab.data.loader import TensorLoader
    from prunelab.experiment import load_recipe, trained_dense

    recipe = load_recipe("gpt2_pystdlib_dense", a.overrides)
    ctx, dense = trained_dense(recipe, a.runs_dir)
    base = ctx.evaluate(dense)["ppl"]
    cal = ctx.data.calibration
    rows: dict = {}
    for draw in map(int, a.draws.split(",")):
        masks: dict = {}
        for pattern in ("50%", "2:4"):
            for label, (spec, opts, _) in VARIANTS.items():
                spec = {**spec, "samples": a.samples, **({"granularity": "nm"} if pattern == "2:4" else {})}
                model = copy.deepcopy(dense)
                batches = TensorLoader(cal.x, cal.y, cal.batch_size, shuffle=True, seed=draw)
                t = time.perf_counter()
                p = Pruner(model, spec, sparsity=0.5, schedule="manual", seed=draw)
                p.calibrate(batches, samples=a.samples, **opts)
                p.prune(0.5)
                secs = time.perf_counter() - t
                masks[label, pattern] = dict(p.masks)
                r = rows.setdefault((label, pattern), {"ppl": [], "s": [], "diff": []})
                r["ppl"].append(ctx.evaluate(model)["ppl"])
                r["s"].append(secs)
                ref = VARIANTS[label][2]
                if ref is not None:
                    mine, theirs = masks[label, pattern], masks[ref, pattern]
                    r["diff"].append(sum(int((mine[n] != theirs[n]).sum()) for n in mine)
                                     / sum(m.numel() for m in mine.values()))
    pm = lambda v: f"{statistics.mean(v):.3f}" + (f" +- {statistics.stdev(v):.3f}" if len(v) > 1 else "")  # noqa: E731
    print("# Calibration defaults on a trained small GPT-2 (perplexity, lower is better)\n")
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {a.threads} thread(s); model {recipe.model.name} "
          f"{recipe.model.kwargs}; {a.samples} calibration windows per draw, draws {a.draws}; dense perplexity "
          f"{base:.3f}.\n")
    print("| variant | 50 %: perplexity | mask entries differing from | 2:4: perplexity | mask entries differing | "
          "seconds (50 % / 2:4) |")
    print("|---|---|---|---|---|---|")
    for label, (_, _, ref) in VARIANTS.items():
        u, nm = rows[label, "50%"], rows[label, "2:4"]
        d = lambda r: f"{100 * statistics.mean(r['diff']):.3f} % of {ref}" if r["diff"] else "-"  # noqa: E731
        print(f"| {label} | {pm(u['ppl'])} | {d(u)} | {pm(nm['ppl'])} | {d(nm)} | "
              f"{statistics.median(u['s']):.1f} / {statistics.median(nm['s']):.1f} |")
    print(f"\nCommand: `python benchmarks/calibration_precision.py --draws {a.draws} --samples {a.samples} "
          f"--threads {a.threads}" + "".join(f" {o}" for o in a.overrides) + "`")


if __name__ == "__main__":
    main()

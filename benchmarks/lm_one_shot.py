"""One-shot pruning of the small GPT-2 of ``gpt2_pystdlib_dense``: perplexity on held-out Python source after
magnitude, Wanda and SparseGPT at 50 % unstructured and at 2:4, over several calibration draws, then a short
recovery fine-tune after 2:4.

    python benchmarks/lm_one_shot.py --runs-dir runs --draws 0,1,2 --threads 1 > benchmarks/results/lm_one_shot.md

The dense model is the recipe's (trained once, cached in the runs folder). A calibration draw is ``samples``
windows of the calibration split (files of the standard library that neither training nor evaluation sees) in an
order drawn from the draw's seed. Perplexity is exp of the mean token loss over the held-out stream (windows of
the recipe's ``seq_len``, every token predicted once). Sparsity is over the transformer blocks' weight matrices
(attention and MLP); embeddings and the tied output layer stay dense, as in the papers.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--samples", type=int, default=128, help="calibration windows per draw")
    ap.add_argument("--recovery-steps", type=int, default=100, help="fine-tuning steps after 2:4 (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt", help="comma-separated; empty: the dense rows only")
    ap.add_argument("overrides", nargs="*", help="recipe overrides (e.g. for a quick check)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from prunelab import Pruner
    from prunelab.data.loader import TensorLoader
    from prunelab.experiment import load_recipe, trained_dense
    from prunelab.training import Trainer, build_optimizer

    recipe = load_recipe("gpt2_pystdlib_dense", a.overrides)
    ctx, dense = trained_dense(recipe, a.runs_dir)
    t0 = time.perf_counter()
    base = ctx.evaluate(dense)
    eval_s = time.perf_counter() - t0
    cal = ctx.data.calibration
    methods = {"magnitude": "magnitude", "wanda": {"name": "wanda", "samples": a.samples},
               "sparsegpt": {"name": "sparsegpt", "samples": a.samples}}
    methods = {k: v for k, v in methods.items() if k in a.methods.split(",")}
    rows: dict = {}

    def recover(model, pruner, draw):
        """A short fine-tune of ``model`` (masks held by ``pruner`` when given); returns held-out perplexity."""
        tr = ctx.data.train
        n = a.recovery_steps * tr.batch_size
        loader = TensorLoader(tr.x[:n], tr.y[:n], tr.batch_size, shuffle=True, seed=draw)
        cfg = recipe.train.model_copy(update={"epochs": 1, "lr": recipe.train.lr / 10, "lr_schedule": "constant"})
        torch.manual_seed(draw)
        Trainer(model, build_optimizer(model, cfg), cfg, loader, None, pruner=pruner, progress=False,
                task="causal_lm").fit()
        return ctx.evaluate(model)["ppl"]
    # the same fine-tune of the dense model: how much of a "recovery" is only more training
    dense_rec = [recover(copy.deepcopy(dense), None, d) for d in map(int, a.draws.split(","))] \
        if a.recovery_steps else []
    for draw in map(int, a.draws.split(",")):
        batches = TensorLoader(cal.x, cal.y, cal.batch_size, shuffle=True, seed=draw)
        for label, spec in methods.items():
            for pattern in ("50%", "2:4"):
                model = copy.deepcopy(dense)
                if pattern == "2:4":
                    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
                    spec["granularity"] = "nm"
                t = time.perf_counter()
                p = Pruner(model, spec, sparsity=0.5, schedule="manual", seed=draw)
                p.calibrate(batches, samples=a.samples)
                p.prune(0.5)
                secs = time.perf_counter() - t
                ev = ctx.evaluate(model)
                r = rows.setdefault((label, pattern), {"ppl": [], "s": [], "rec": []})
                r["ppl"].append(ev["ppl"])
                r["s"].append(secs)
                if pattern == "2:4" and a.recovery_steps:
                    r["rec"].append(recover(model, p, draw))
    pm = lambda v: f"{statistics.mean(v):.3f}" + (f" +- {statistics.stdev(v):.3f}" if len(v) > 1 else "")  # noqa: E731
    s = ctx.recipe.data
    print("# One-shot pruning of a small GPT-2 on Python source (perplexity, lower is better)\n")
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {a.threads} thread(s); model "
          f"{recipe.model.name} {recipe.model.kwargs}, {sum(q.numel() for q in dense.parameters()):,} parameters; "
          f"held-out: {sum(y.numel() for _, y in ctx.data.test):,} tokens in windows of {s.seq_len} "
          f"({eval_s:.0f} s per evaluation); calibration: {a.samples} windows per draw, draws {a.draws}.\n")
    print(f"Dense perplexity: {base['ppl']:.3f} (next-token accuracy {base['acc']:.4f})"
          + (f"; after the same fine-tune as the recovery below: {pm(dense_rec)}" if dense_rec else "") + ".\n")
    print("| method | 50 % unstructured | 2:4 | 2:4 after recovery | seconds (50 % / 2:4) |")
    print("|---|---|---|---|---|")
    for label in methods:
        u, nm = rows[label, "50%"], rows[label, "2:4"]
        rec = pm(nm["rec"]) if nm["rec"] else "-"
        print(f"| {label} | {pm(u['ppl'])} | {pm(nm['ppl'])} | {rec} | "
              f"{statistics.median(u['s']):.1f} / {statistics.median(nm['s']):.1f} |")
    if a.recovery_steps:
        print(f"\nRecovery: {a.recovery_steps} steps of {ctx.data.train.batch_size} training windows with the masks "
              f"held, {recipe.train.optimizer} at lr {recipe.train.lr / 10:g} (a tenth of the dense training's).")
    print(f"\nCommand: `python benchmarks/lm_one_shot.py --draws {a.draws} --samples {a.samples} "
          f"--recovery-steps {a.recovery_steps} --threads {a.threads}" + "".join(f" {o}" for o in a.overrides) + "`")


if __name__ == "__main__":
    main()

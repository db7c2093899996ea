"""Recovery after pruning the small LLaMA of ``llama_pystdlib_dense``: the task loss, distillation from the dense
model, and the Rethinking controls (Scratch-E, Scratch-B) at the same recovery tokens.

    python benchmarks/recovery_lm.py --runs-dir runs --threads 1 > benchmarks/results/recovery_lm.md

Settings: SparseGPT at 50 % unstructured and at 2:4 (the blocks' weight matrices; embeddings and the output layer
dense), and MLP channels removed by ``transformer_units`` (Minitron's mean |activation| score) so that 25 % and 50 %
of all the model's parameters go, the model shrunk to a smaller ``LlamaForCausalLM``. Variants, each trained
K optimizer steps of ``--batch`` windows (one trajectory per variant and seed, evaluated at every K):

- ``task``: the pruned model trained with the next-token loss (masks held for SparseGPT);
- ``distill``: the same steps with :class:`prunelab.training.distill.Distillation` from the dense model (``--alpha``,
  ``--temperature``; logits only: a shrunk MLP keeps the hidden size, so no hidden-state term is needed);
- ``scratch_e``: the pruned architecture (the shrunk model, or the masked one) from transformers' own fresh
  initialisation, the same K steps on the same tokens;
- ``scratch_b``: the same trajectory read at K x FLOPs(dense) / FLOPs(pruned) steps (nonzero multiply-accumulates),
  the Scratch-B budget of the same compute.

Every variant uses one optimizer setting (AdamW, constant ``--lr``, weight decay 0.01, so that one trajectory
gives every K) and, for a seed, the same order of training windows. Perplexity is measured on the first
``--eval-windows`` windows of the held-out stream, the same windows for every point (paired comparisons).
Seeds: the first ``--full-seeds`` go to the largest K, the others stop at the K below it. Results are cached
per trajectory in ``RUNS/recovery_lm/`` (a rerun continues); the plot is written to ``--plot``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch

SETTINGS = ("units 50%", "sparsegpt 2:4", "units 25%", "sparsegpt 50%")
VARIANTS = ("task", "distill", "scratch_e", "scratch_b")
LABELS = {"task": "task loss", "distill": "distillation", "scratch_e": "Scratch-E", "scratch_b": "Scratch-B"}


def prune(setting: str, dense, ctx, samples: int):
    """(student model, (method spec, masks) or None) of ``setting`` from ``dense``."""
    from prunelab import Pruner
    from prunelab.data.loader import TensorLoader
    from prunelab.export import shrink
    from structured_lm import sparsity_for

    model = copy.deepcopy(dense)
    cal = ctx.data.calibration
    batches = TensorLoader(cal.x, cal.y, cal.batch_size, shuffle=True, seed=0)
    if setting.startswith("units"):
        target = float(setting.split()[1].rstrip("%")) / 100
        s = sparsity_for(dense, ["mlp"], target)
        p = Pruner(model, {"name": "transformer_units", "units": ["mlp"],
                           "criterion": {"name": "activation", "samples": samples}},
                   sparsity=s, schedule="manual", example_inputs=ctx.example_inputs(), seed=0)
        p.calibrate(batches, samples=samples)
        p.prune(s, final=True)
        small, _ = shrink(model, p.masks, ctx.example_inputs(), graph=p.channels)
        return small, None
    spec = {"name": "sparsegpt", "samples": samples, **({"granularity": "nm"} if "2:4" in setting else {})}
    p = Pruner(model, spec, sparsity=0.5, schedule="manual", seed=0)
    p.calibrate(batches, samples=samples)
    p.prune(0.5)
    return model, (spec, p.masks)


def held(model, pruned):
    """A pruner holding the masks of ``pruned`` (method spec, masks) fixed on ``model`` (None: nothing to hold)."""
    if pruned is None:
        return None
    from prunelab import Pruner

    p = Pruner(model, pruned[0], sparsity=0.5, schedule="manual")
    p.set_masks(pruned[1])
    return p


class Points:
    """Trainer hook: held-out perplexity at the steps asked for."""

    def __init__(self, at: set[int], evaluate) -> None:
        self.at, self.evaluate, self.ppl = at, evaluate, {}

    def on_batch_end(self, trainer, step: int, loss: float) -> None:
        if step in self.at:
            self.ppl[step] = self.evaluate(trainer.model)


def trajectory(model, pruner, loss_fn, ctx, a, seed: int, at: set[int], evaluate) -> dict[int, float]:
    from prunelab.data.loader import TensorLoader
    from prunelab.training import OptimConfig, Trainer, build_optimizer

    tr = ctx.data.train
    loader = TensorLoader(tr.x, tr.y, a.batch, shuffle=True, seed=seed)
    cfg = OptimConfig(max_steps=max(at), optimizer="adamw", lr=a.lr, weight_decay=0.01, lr_schedule="constant")
    points = Points(at, evaluate)
    torch.manual_seed(seed)
    Trainer(model, build_optimizer(model, cfg), cfg, loader, None, pruner=pruner, progress=False,
            task="causal_lm", loss_fn=loss_fn, hooks=[points]).fit()
    return points.ppl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--full-seeds", type=int, default=1, help="seeds that go to the largest K")
    ap.add_argument("--steps", default="100,400,1600", help="the K at which perplexity is reported")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--batch", type=int, default=4, help="training windows per step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=128, help="calibration windows")
    ap.add_argument("--eval-windows", type=int, default=128)
    ap.add_argument("--plot", default="benchmarks/results/recovery_lm.png")
    ap.add_argument("overrides", nargs="*", help="recipe overrides (e.g. for a quick check)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import transformers
    from prunelab.analysis import count_flops
    from prunelab.data.loader import TensorLoader
    from prunelab.training.distill import Distillation
    from prunelab.experiment import load_recipe, trained_dense
    from prunelab.models import reinit
    from prunelab.training import evaluate

    transformers.logging.set_verbosity_error()
    recipe = load_recipe("llama_pystdlib_dense", a.overrides)
    ctx, dense = trained_dense(recipe, a.runs_dir)
    te = ctx.data.test
    held_out = TensorLoader(te.x[:a.eval_windows], te.y[:a.eval_windows], 32)
    ppl_of = lambda m: evaluate(m, held_out, task="causal_lm")["ppl"]  # noqa: E731
    cache = Path(a.runs_dir) / "recovery_lm"
    cache.mkdir(parents=True, exist_ok=True)
    ks = sorted(map(int, a.steps.split(",")))
    seeds = list(map(int, a.seeds.split(",")))
    shape, dt = ctx.spec.input_shape, ctx.spec.input_dtype
    dense_flops = count_flops(dense, shape, dtype=dt)["dense"]
    results, info, t_start = {}, {}, time.perf_counter()
    for setting in a.settings.split(","):
        student, pruner = prune(setting, dense, ctx, a.samples)
        ratio = dense_flops / count_flops(student, shape, dtype=dt)["nonzero"]
        info[setting] = {"pruned": ppl_of(student), "ratio": ratio,
                         "params": sum(int((q != 0).sum()) for q in student.parameters())}
        for i, seed in enumerate(seeds):
            top = ks if i < a.full_seeds else [k for k in ks if k < ks[-1]] or ks[:1]
            for variant in ("task", "distill", "scratch_e"):
                path = cache / f"{setting.replace(' ', '_').replace(':', '-')}-{variant}-{seed}-b{a.batch}.json"
                if path.is_file():
                    results[setting, variant, seed] = {int(k): v for k, v in json.loads(path.read_text()).items()}
                    continue
                at = set(top) | ({math.ceil(k * ratio) for k in top} if variant == "scratch_e" else set())
                model = copy.deepcopy(student)
                loss_fn = None
                if variant == "distill":
                    loss_fn = Distillation(copy.deepcopy(dense), a.alpha, a.temperature, "causal_lm")
                if variant == "scratch_e":
                    model = reinit(model, 1000 + seed)
                t0 = time.perf_counter()
                ppl = trajectory(model, held(model, pruner), loss_fn, ctx, a, seed, at, ppl_of)
                path.write_text(json.dumps(ppl))
                results[setting, variant, seed] = ppl
                print(f"<!-- {setting} {variant} seed {seed}: {max(at)} steps in {time.perf_counter() - t0:.0f} s, "
                      f"{time.perf_counter() - t_start:.0f} s so far -->", file=sys.stderr, flush=True)
    report(a, recipe, dense, ctx, ppl_of, info, results, ks, seeds)


def at_k(results, setting, variant, seeds, k, ratio) -> list[float]:
    src = "scratch_e" if variant == "scratch_b" else variant
    step = math.ceil(k * ratio) if variant == "scratch_b" else k
    return [r[step] for s in seeds if step in (r := results.get((setting, src, s), {}))]


def report(a, recipe, dense, ctx, ppl_of, info, results, ks, seeds) -> None:
    pm = lambda v: "-" if not v else f"{statistics.mean(v):.2f}" + (  # noqa: E731
        f" +- {statistics.stdev(v):.2f} ({len(v)})" if len(v) > 1 else " (1)")
    tokens = a.batch * recipe.data.seq_len
    print(f"# Recovery after pruning a small LLaMA ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
          f"{a.threads} thread(s))\n")
    print(f"Dense `llama_pystdlib_dense` ({sum(q.numel() for q in dense.parameters()):,} parameters): held-out "
          f"perplexity {ppl_of(dense):.3f} on the first {a.eval_windows} windows of {recipe.data.seq_len} tokens "
          f"(every figure below is on these windows). Recovery: AdamW, constant lr {a.lr:g}, weight decay 0.01, "
          f"{a.batch} windows ({tokens:,} tokens) a step; distillation alpha {a.alpha:g}, temperature "
          f"{a.temperature:g}. Perplexity mean +- std over seeds (how many in brackets); K = steps of recovery; "
          f"Scratch-B at K x the FLOP ratio.\n")
    print("| setting | params (nonzero) | FLOP ratio | after pruning | variant | "
          + " | ".join(f"K={k} ({k * tokens:,} tok.)" for k in ks) + " |")
    print("|---|---|---|---|---|" + "---|" * len(ks))
    for setting, inf in info.items():
        for j, v in enumerate(VARIANTS):
            lead = f"| {setting} | {inf['params']:,} | {inf['ratio']:.2f} | {inf['pruned']:.2f} |" if j == 0 else \
                "| | | | |"
            print(lead + f" {LABELS[v]} | " + " | ".join(pm(at_k(results, setting, v, seeds, k, inf["ratio"]))
                                                         for k in ks) + " |")
    print(f"\nCommand: `python benchmarks/recovery_lm.py --runs-dir {a.runs_dir} --threads {a.threads} --seeds "
          f"{a.seeds} --full-seeds {a.full_seeds} --steps {a.steps} --batch {a.batch} --lr {a.lr:g}`; plot: "
          f"`{a.plot}`.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(info), figsize=(4 * len(info), 3.4), squeeze=False)
    for ax, (setting, inf) in zip(axes[0], info.items()):
        for v in VARIANTS:
            pts = [(k * tokens, statistics.mean(p)) for k in ks if (p := at_k(results, setting, v, seeds, k, inf["ratio"]))]
            if v in ("task", "distill"):  # they start from the pruned model; the scratch controls from nothing
                pts = [(0, inf["pruned"])] + pts
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=LABELS[v])
        ax.set_title(setting)
        ax.set_xlabel("recovery tokens")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("held-out perplexity")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.plot, dpi=110)


if __name__ == "__main__":
    main()

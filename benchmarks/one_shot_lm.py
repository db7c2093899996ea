"""Every one-shot method at equal budget on the small LLaMA of ``llama_pystdlib_dense``: held-out perplexity at 50,
60 and 70 % unstructured and at 2:4, over several calibration draws, one table and one plot, and the orderings the
papers report checked at this scale.

    python benchmarks/one_shot_lm.py --runs-dir runs --threads 1 > benchmarks/results/one_shot_lm.md

Methods: magnitude (per layer), Wanda (per output row; Sun et al. 2024), SparseGPT (Frantar & Alistarh 2023), RIA
(Zhang et al. 2024, a 0.5, compared per row; at 2:4 also with its channel permutation, heuristic and assignment,
made real in the MLPs: :mod:`prunelab.engine.permutation`), DSnoT after Wanda (Zhang et al. 2024, 50 cycles, power 1),
each sequential as their authors run them (a block calibrated on the inputs the pruned
blocks before it produce); OWL (Yin et al. 2024, m 5, lam 0.08) with Wanda and with SparseGPT, which rank the
layers from one pass over the dense model, so beside them Wanda and SparseGPT from that same one pass ("one
pass"): OWL's effect is the difference between those two rows. OWL changes layer sparsities, which N:M fixes, so
it has no 2:4 column. Sparsity is over the transformer blocks' weight matrices (embeddings and the output layer
stay dense, as in the papers). A calibration draw is ``--samples`` windows of the calibration split (files that
neither training nor evaluation sees) in an order drawn from the draw's seed; magnitude needs none and is run
once. Perplexity: exp of the mean token loss over the held-out stream, windows of the recipe's ``seq_len``. The
dense model is the recipe's, trained once and cached in the runs folder (about 6 minutes on one thread here).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

PATTERNS = ("50%", "60%", "70%", "2:4")
OWL = {"name": "owl", "m": 5.0, "lam": 0.08}


def methods(samples: int) -> dict[str, dict]:
    """{label: method spec} at unstructured granularity (2:4 swaps in ``nm``)."""
    wanda = {"name": "wanda", "samples": samples}
    sgpt = {"name": "sparsegpt", "samples": samples}
    return {
        "magnitude": {"name": "magnitude"},
        "Wanda": wanda,
        "SparseGPT": sgpt,
        "RIA": {**wanda, "criterion": {"name": "ria", "samples": samples, "a": 0.5}},
        "RIA, channels permuted": {**wanda, "criterion": {"name": "ria", "samples": samples, "a": 0.5}, "nm_only": True},
        "DSnoT + Wanda": {**wanda, "selector": {"name": "dsnot", "samples": samples}},
        # which layers DSnoT helps, and how many swaps (not in the default table: --methods with these labels);
        # attention only is the authors' default (--skip_layer mlp)
        "DSnoT + Wanda, attention only": {**wanda, "selector": {"name": "dsnot", "skip": ["*.mlp.*"]}, "extra": True},
        "DSnoT + Wanda, MLPs only": {**wanda, "selector": {"name": "dsnot", "skip": ["*.self_attn.*"]}, "extra": True},
        "DSnoT + Wanda, one swap per row": {**wanda, "selector": {"name": "dsnot", "cycles": 1}, "extra": True},
        "Wanda, one pass": {**wanda, "sequential": False},
        "OWL + Wanda": {**wanda, "sequential": False, "allocation": OWL},
        "SparseGPT, one pass": {**sgpt, "sequential": False},
        "OWL + SparseGPT": {**sgpt, "sequential": False, "criterion": "wanda", "allocation": OWL},
    }


def sd(v: list[float]) -> float:
    """The standard deviation over draws (0 for a single run: magnitude draws nothing)."""
    return statistics.stdev(v) if len(v) > 1 else 0.0


def spec_for(spec: dict, pattern: str) -> tuple[dict, float] | None:
    """The method spec and sparsity of ``pattern`` (None where the method has no such setting)."""
    spec = dict(spec)
    permuted = spec.pop("nm_only", False)
    if pattern == "2:4":
        gran = {"name": "nm", "n": 2, "m": 4, **({"permute": "lsa"} if permuted else {})}
        return None if "allocation" in spec else ({**spec, "granularity": gran}, 0.5)
    return None if permuted else (spec, int(pattern[:-1]) / 100)


# (claim, paper, pattern, better label, worse label)
CLAIMS = [
    ("Wanda beats magnitude", "Sun et al. 2024, Table 3", "50%", "Wanda", "magnitude"),
    ("Wanda beats magnitude at 2:4", "Sun et al. 2024, Table 3", "2:4", "Wanda", "magnitude"),
    ("SparseGPT beats Wanda at high sparsity", "Sun et al. 2024, Figure 2", "70%", "SparseGPT", "Wanda"),
    ("RIA beats Wanda", "Zhang et al. 2024 (RIA), Table 2", "50%", "RIA", "Wanda"),
    ("RIA beats Wanda at 2:4", "Zhang et al. 2024 (RIA), Table 4", "2:4", "RIA", "Wanda"),
    ("RIA beats SparseGPT", "Zhang et al. 2024 (RIA), Table 2", "50%", "RIA", "SparseGPT"),
    ("Channel permutation improves RIA at 2:4", "Zhang et al. 2024 (RIA), Table 4", "2:4", "RIA, channels permuted",
     "RIA"),
    ("OWL improves Wanda at 70 %", "Yin et al. 2024, Table 3", "70%", "OWL + Wanda", "Wanda, one pass"),
    ("OWL improves SparseGPT at 70 %", "Yin et al. 2024, Table 3", "70%", "OWL + SparseGPT", "SparseGPT, one pass"),
    ("DSnoT improves Wanda at 60 %", "Zhang et al. 2024 (DSnoT), Table 1", "60%", "DSnoT + Wanda", "Wanda"),
    ("DSnoT improves Wanda at 70 %", "Zhang et al. 2024 (DSnoT), Table 2", "70%", "DSnoT + Wanda", "Wanda"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--samples", type=int, default=128, help="calibration windows per draw")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="", help="labels to run, separated by ';' (default: all but the extra rows)")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--plot", default="benchmarks/results/one_shot_lm.png", help="where the plot goes ('' for none)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides (e.g. for a quick check)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from prunelab import Pruner
    from prunelab.data.loader import TensorLoader
    from prunelab.experiment import load_recipe, trained_dense

    recipe = load_recipe("llama_pystdlib_dense", a.overrides)
    ctx, dense = trained_dense(recipe, a.runs_dir)
    dense.eval()
    t0 = time.perf_counter()
    base = ctx.evaluate(dense)
    eval_s = time.perf_counter() - t0
    cal = ctx.data.calibration
    todo = methods(a.samples)
    todo = {k: v for k, v in todo.items() if k in a.methods.split(";")} if a.methods else \
        {k: v for k, v in todo.items() if not v.get("extra")}
    todo = {k: {n: x for n, x in v.items() if n != "extra"} for k, v in todo.items()}
    patterns = a.patterns.split(",")
    draws = [int(d) for d in a.draws.split(",")]
    ppl: dict = {}
    secs: dict = {}
    sparsity: dict = {}
    for label, spec in todo.items():
        for pattern in patterns:
            if spec_for(spec, pattern) is None:
                continue
            for draw in draws[:1] if label == "magnitude" else draws:
                s_spec, s = spec_for(spec, pattern)
                model = copy.deepcopy(dense)
                t = time.perf_counter()
                p = Pruner(model, s_spec, sparsity=s, schedule="manual", seed=draw)
                if p.needs.calibration is not None:
                    p.calibrate(TensorLoader(cal.x, cal.y, cal.batch_size, shuffle=True, seed=draw), samples=a.samples)
                p.prune(s)
                secs.setdefault((label, pattern), []).append(time.perf_counter() - t)
                ppl.setdefault((label, pattern), []).append(ctx.evaluate(model)["ppl"])
                sparsity[label, pattern] = p.masks.sparsity()
                print(f"{label} {pattern} draw {draw}: {ppl[label, pattern][-1]:.3f} "
                      f"({secs[label, pattern][-1]:.1f} s)", file=sys.stderr, flush=True)

    def pm(v):
        return f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")

    s = ctx.recipe.data
    print("# One-shot methods at equal budget on a small LLaMA (held-out perplexity, lower is better)\n")
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {a.threads} thread(s), shared 2-core machine; "
          f"model {recipe.model.name} {recipe.model.kwargs}, {sum(q.numel() for q in dense.parameters()):,} "
          f"parameters; held-out: {sum(y.numel() for _, y in ctx.data.test):,} tokens in windows of {s.seq_len} "
          f"({eval_s:.0f} s per evaluation); calibration: {a.samples} windows per draw, draws {a.draws} (mean ± "
          "standard deviation over draws; magnitude needs no calibration: one run).\n")
    print(f"Dense perplexity: {base['ppl']:.3f}.\n")
    print("| method | " + " | ".join(patterns) + " | seconds to calibrate and prune (median) |")
    print("|---|" + "---|" * (len(patterns) + 1))
    for label in todo:
        cells = [pm(ppl[label, q]) if (label, q) in ppl else "-" for q in patterns]
        times = [t for q in patterns for t in secs.get((label, q), [])]
        print(f"| {label} | " + " | ".join(cells) + f" | {statistics.median(times):.1f} |")
    print("\nSparsity over the pruned weight matrices (draw 0): "
          + ", ".join(f"{q} {sparsity[k, q]:.4f}" for k, q in sparsity if k == "Wanda") + ".\n")
    print("## The papers' orderings at this scale\n")
    print("Holds: the better method's mean is lower; beyond the spread: by more than the two draws' standard "
          "deviations summed.\n")
    print("| claim | source | here | holds |")
    print("|---|---|---|---|")
    for claim, source, q, good, bad in CLAIMS:
        if (good, q) not in ppl or (bad, q) not in ppl:
            continue
        g, b = ppl[good, q], ppl[bad, q]
        spread = sd(g) + sd(b)
        gap = statistics.mean(b) - statistics.mean(g)
        verdict = ("yes" if gap > spread else "yes, within the spread") if gap > 0 else \
            ("no" if -gap > spread else "no, within the spread")
        print(f"| {claim} | {source} | {q}: {good} {statistics.mean(g):.3f}, {bad} {statistics.mean(b):.3f} | "
              f"{verdict} |")
    print(f"\nCommand: `python benchmarks/one_shot_lm.py --runs-dir {a.runs_dir} --draws {a.draws} --samples "
          f"{a.samples} --threads {a.threads}" + (f" --methods '{a.methods}'" if a.methods else "")
          + (f" --patterns {a.patterns}" if a.patterns != ",".join(PATTERNS) else "")
          + "".join(f" {o}" for o in a.overrides) + "`")
    if a.plot:
        plot(ppl, todo, patterns, base["ppl"], a.plot)


def plot(ppl: dict, todo: dict, patterns: list[str], dense: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    unstructured = [q for q in patterns if q.endswith("%")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for label in todo:
        if not any((label, q) in ppl for q in unstructured):
            continue
        xs = [int(q[:-1]) for q in unstructured if (label, q) in ppl]
        ys = [statistics.mean(ppl[label, q]) for q in unstructured if (label, q) in ppl]
        err = [sd(ppl[label, q]) for q in unstructured if (label, q) in ppl]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(dense, color="grey", lw=0.8, ls="--", label="dense")
    ax.set_yscale("log")
    # Plain numbers on the log axis: the spread of interest is 4.7-8, where 10^0 ticks say nothing.
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("sparsity of the blocks' weight matrices (%)")
    ax.set_ylabel("held-out perplexity")
    ax.set_xticks([int(q[:-1]) for q in unstructured])
    ax.legend(fontsize=7)
    nm = [label for label in todo if (label, "2:4") in ppl]
    means = [statistics.mean(ppl[label, "2:4"]) for label in nm]
    bx.errorbar(means, nm, xerr=[sd(ppl[label, "2:4"]) for label in nm], fmt="o", capsize=3)
    bx.axvline(dense, color="grey", lw=0.8, ls="--")
    # Start the axis at the dense model, not at zero: every method lies within 20 % of it.
    bx.set_xlim(dense - 0.05 * (max(means, default=dense) - dense + 0.1), None)
    bx.set_xlabel("perplexity at 2:4")
    bx.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

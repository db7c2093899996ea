"""Accuracy against compression: a recipe's pruning method and its baselines at the same training budget.

``prunelab curve lenet5_mnist_drop --compressions 10,20,50,100 --seeds 3 --jobs 2 --out results/lenet5`` runs,
for every target compression (over prunable weights) and seed, the recipe as it is and the recipe with
``prune.method`` replaced by each baseline (default: global magnitude pruning) — same dense model, rounds,
retraining epochs and learning rates, so the methods differ in their masks only; a one-shot baseline
(``wanda``, ``sparsegpt``, ``pca``) reads each point in one event followed by one retraining — and writes ``OUT.md`` (mean
+- std over seeds, accuracy relative to each seed's own dense model, achieved compression, wall time of the
pruning stages), ``OUT.csv`` (every run) and ``OUT.png`` (accuracy against compression, log x axis).

Runs are ordinary run folders found by their recipe hash, so an interrupted curve resumes where it stopped and
points shared with other sweeps are not run twice.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_bytes, atomic_write_text
from .compare import mean_std
from .sweep import plan, run_sweep
from .paths import DENSE

DEFAULT_BASELINES = {"magnitude": "{name: magnitude, allocation: global}"}


def parse_compressions(text: str) -> list[float]:
    """``"10,20,50"`` -> [10.0, 20.0, 50.0]; every value must be a number above 1."""
    try:
        comps = [float(c) for c in text.split(",")]
    except ValueError:
        raise ConfigError(f"--compressions must be comma-separated numbers, got {text!r}") from None
    bad = [c for c in comps if not 1 < c <= MAX_COMPRESSION]
    if bad:
        raise ConfigError(f"compressions must be above 1 (1 / density) and at most {MAX_COMPRESSION:,.0f} (beyond, "
                          f"no model keeps a weight), got {bad[0]:g}")
    return comps


#: 1 / density: a millionth of the weights is already fewer than one per layer for every model here.
MAX_COMPRESSION = 1e6


def parse_baselines(items: list[str] | None) -> dict[str, str]:
    """``LABEL=METHOD`` items (METHOD a YAML flow mapping or a method name) -> {label: method}."""
    if not items:
        return dict(DEFAULT_BASELINES)
    out = {}
    for item in items:
        label, sep, method = item.partition("=")
        if not sep or not label.strip() or not method.strip():
            raise ConfigError(f"--baseline {item!r} must look like LABEL=METHOD, e.g. "
                              "magnitude='{name: magnitude, allocation: global}'")
        out[label.strip()] = method.strip()
    return out


def curve_points(recipe_name: str, compressions: list[float], baselines: dict[str, str], seeds: int,
                 runs_dir: str | Path, fixed: list[str] = ()) -> list[dict]:
    """Every (method, compression, seed) point as a sweep point, validated before anything runs. The recipe's
    own method is labelled with its name and comes first."""
    from . import load_recipe

    recipe = load_recipe(recipe_name, list(fixed))
    if recipe.prune is None:
        raise ConfigError(f"recipe {recipe_name!r} has no prune section, so there is no curve to draw")
    own = recipe.prune.method.get("name", "recipe") if isinstance(recipe.prune.method, dict) else \
        str(recipe.prune.method)
    if own in baselines and baselines == DEFAULT_BASELINES:  # the default collides with the recipe's own name
        spec = recipe.prune.method if isinstance(recipe.prune.method, dict) else {"name": recipe.prune.method}
        # the same method as the recipe's: nothing to compare it with (the curve has the recipe's points);
        # another magnitude method: the baseline keeps its meaning under a label of its own
        baselines = {} if _parse(baselines[own]) == spec else {f"{own}_global": baselines[own]}
    if own in baselines:
        raise ConfigError(f"baseline label {own!r} is the recipe's own method; pick another label")
    methods = {own: None, **baselines}
    points = []
    for c in compressions:
        for label, method in methods.items():
            over = list(fixed) + [f"prune.sparsity={1 - 1 / c:.10f}"]
            if method is not None:
                over.append(f"prune.method={method}")
                if _one_shot(method):  # a calibrated method reads each compression point in one event
                    over.append("prune.schedule.name=oneshot")
            for p in plan(recipe_name, [], seeds, runs_dir, over):
                p.update(method=label, target_compression=c, seed=int(p["overrides"][-1].split("=")[1]))
                points.append(p)
    return points


def _parse(method: str):
    """A --baseline METHOD (a name or a YAML flow mapping) as the method spec it names."""
    from .yaml_input import parse_yaml

    spec = parse_yaml(method, f"baseline method {method[:60]!r}")
    return {"name": spec} if isinstance(spec, str) else spec


def _one_shot(method: str) -> bool:
    """Whether the method (a name or a YAML flow mapping, as given to --baseline) decides in one shot."""
    from ..methods import build_method

    return build_method(_parse(method)).one_shot


def run_curve(recipe_name: str, points: list[dict], runs_dir: str | Path, jobs: int, threads: int | None = None,
              log=print) -> list[dict]:
    """Run the unfinished points; one row per finished run (failures are logged and left out)."""
    # the first method at the first compression trains each seed's dense model; running those first lets the
    # parallel jobs that follow reuse the dense models instead of racing to train them
    first = [p for p in points if p["method"] == points[0]["method"]
             and p["target_compression"] == points[0]["target_compression"]]
    rest = [p for p in points if p not in first]
    results = []
    for batch in (first, rest):
        if batch:
            results += run_sweep(recipe_name, batch, runs_dir, jobs, log=log, threads=threads)
    rows = []
    for p, r in zip(first + rest, results):
        s = r.get("summary")
        if s is None or s.get("pruned_acc") is None:
            log(f"  {p['method']} {p['target_compression']:g}x seed {p['seed']}: {r['status']}")
            continue
        rows.append({"method": p["method"], "seed": p["seed"], "target_compression": p["target_compression"],
                     "dense_acc": s["dense_acc"], "pruned_acc": s["pruned_acc"],
                     "compression_prunable": s["compression_prunable"], "compression_model": s["compression_model"],
                     "prune_seconds": sum(st["seconds"] for st in s["stages"] if st["stage"] != DENSE),
                     "dense_seconds": s["stages"][0]["seconds"], "run_dir": r["run_dir"]})
    return rows


def table_lines(rows: list[dict], title: str, command: str | None = None) -> list[str]:
    """The markdown report: dense accuracy over seeds, then one line per (compression, method)."""
    dense = list({r["seed"]: r["dense_acc"] for r in rows}.values())
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Seeds {sorted({r['seed'] for r in rows})}; dense accuracy {mean_std(dense, 100)} %. Compression "
              "over prunable weights (conv and linear weights; whole-model compression, biases included, is in the "
              "CSV). Every method gets the same dense model, rounds and retraining epochs; prune time excludes the "
              "shared dense training.", "",
              "| target compression | method | accuracy % | accuracy - dense (points) | compression (prunable) | "
              "compression (all params) | prune time s |", "|---|---|---|---|---|---|---|"]
    for c in sorted({r["target_compression"] for r in rows}):
        for m in dict.fromkeys(r["method"] for r in rows):
            rs = [r for r in rows if r["method"] == m and r["target_compression"] == c]
            if not rs:
                continue
            lines.append(f"| {c:g}x | {m} | {mean_std([r['pruned_acc'] for r in rs], 100)} | "
                         f"{mean_std([r['pruned_acc'] - r['dense_acc'] for r in rs], 100)} | "
                         f"{statistics.mean(r['compression_prunable'] for r in rs):.1f}x | "
                         f"{statistics.mean(r['compression_model'] for r in rs):.1f}x | "
                         f"{mean_std([r['prune_seconds'] for r in rs], 1, 0)} |")
    return lines


def plot(rows: list[dict], path: str | Path, title: str) -> None:
    """Accuracy (mean +- std over seeds) against target compression, one line per method, dense dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = sorted({r["target_compression"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, marker in zip(dict.fromkeys(r["method"] for r in rows), "osd^v<>"):
        xs, means, sds = [], [], []
        for c in comps:
            accs = [r["pruned_acc"] * 100 for r in rows if r["method"] == m and r["target_compression"] == c]
            if accs:
                xs.append(c)
                means.append(statistics.mean(accs))
                sds.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
        ax.errorbar(xs, means, yerr=sds, marker=marker, capsize=3, label=m)
    dense = list({r["seed"]: r["dense_acc"] for r in rows}.values())
    ax.axhline(statistics.mean(dense) * 100, color="gray", linestyle="--", label="dense")
    ax.set_xscale("log")
    ax.set_xticks(comps, [f"{c:g}x" for c in comps])
    ax.minorticks_off()
    ax.set_xlabel("compression over prunable weights")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"{title} (mean +- std over seeds)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_curve(rows: list[dict], out: str | Path, title: str, command: str | None = None) -> list[str]:
    """Write OUT.md, OUT.csv and OUT.png; returns the markdown lines."""
    if not rows:
        raise ConfigError("no run of the curve finished, so there is nothing to write")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(f"{out}.csv", buf.getvalue())
    lines = table_lines(rows, title, command)
    atomic_write_text(f"{out}.md", "\n".join(lines) + "\n")
    plot(rows, f"{out}.png", title)
    return lines


__all__ = ["DEFAULT_BASELINES", "curve_points", "parse_baselines", "parse_compressions", "plot", "run_curve",
           "table_lines", "write_curve"]

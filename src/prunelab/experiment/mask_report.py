"""The mask report of ``prunelab compare``: similarity, structure and stability of the runs' masks.

For finished runs with masks, writes into ``out``:
  ``jaccard.csv`` / ``jaccard.png``  overall Jaccard of every pair of final masks (and ``jaccard_random.csv``,
                                     the expectation for independent random masks of the same densities);
  ``similarity.md``                  per pair of settings: mean Jaccard over seed pairs against chance;
  ``accuracy.png``                   test accuracy against remaining weights, per setting, over rounds;
  ``structure.csv`` / ``.png``       per conv layer: empty filters, input channels, kernels vs random;
  ``stability.csv`` / ``.png``       overlap of consecutive rounds' masks (|A n B| / min(|A|, |B|)), and the distance of the final
                                     sub-network's weights from the same weights of the trained dense model.
"""
from __future__ import annotations

import csv
import io
import statistics
from itertools import combinations
from pathlib import Path

from ..analysis.masks import overlap, similarity, structure, weight_distance
from ..io import atomic_write_bytes, atomic_write_text, read_safetensors
from ..masks import Masks
from .compare import _setting
from .records import load_summary
from .paths import DENSE, MASKS, MODEL, RunPaths


def _stages(d: Path) -> list[str]:
    run = RunPaths(d)
    return [st["stage"] for st in load_summary(d)["stages"] if (run.stage(st["stage"]) / MASKS).is_file()]


def load_runs(run_dirs: list[str | Path]) -> list[dict]:
    """Per run with masks: label, seed, summary, the masks of every pruning stage (in order)."""
    runs = []
    for d in map(Path, run_dirs):
        key, label = _setting(d)
        stages = _stages(d)
        if not stages:
            continue
        run = RunPaths(d)
        runs.append({"dir": d, "key": key, "label": label, "summary": load_summary(d),
                     "masks": [Masks.load(run.stage(st) / MASKS) for st in stages],
                     "stages": stages})
    return runs


def _write_csv(path: Path, header: list, rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, path: Path) -> None:
    """Save a figure atomically: rendered in memory first, so a full disk never leaves an empty PNG behind."""
    import io as _io

    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def mask_report(run_dirs: list[str | Path], out: str | Path) -> list[str]:
    """Write the report files into ``out``; returns the markdown lines of the similarity table."""
    out = Path(out)
    runs = load_runs(run_dirs)
    if len(runs) < 1:
        return []
    prefixes = {r["label"].split(": ", 1)[0] for r in runs}
    if len(prefixes) == 1 and all(": " in r["label"] for r in runs):  # one recipe: name the settings only
        for r in runs:
            r["label"] = r["label"].split(": ", 1)[1]
    keys_of: dict[str, set] = {}
    for r in runs:
        keys_of.setdefault(r["label"], set()).add(r["key"])
    for r in runs:  # settings that differ elsewhere than in the method get their recipe hash in the label
        if len(keys_of[r["label"]]) > 1:
            r["label"] += f" [{r['key'][:6]}]"
    names = [f"{r['label']} s{r['summary']['seed']}" for r in runs]
    n = len(runs)
    obs = [[0.0] * n for _ in range(n)]
    rnd = [[0.0] * n for _ in range(n)]
    for i, j in combinations(range(n), 2):
        if list(runs[i]["masks"][-1]) != list(runs[j]["masks"][-1]):
            obs[i][j] = obs[j][i] = rnd[i][j] = rnd[j][i] = float("nan")
            continue
        sim = similarity(runs[i]["masks"][-1], runs[j]["masks"][-1])
        obs[i][j] = obs[j][i] = sim["jaccard"]
        rnd[i][j] = rnd[j][i] = sim["random"]
    for i in range(n):
        obs[i][i] = rnd[i][i] = 1.0
    _write_csv(out / "jaccard.csv", ["run"] + names, [[names[i]] + obs[i] for i in range(n)])
    _write_csv(out / "jaccard_random.csv", ["run"] + names, [[names[i]] + rnd[i] for i in range(n)])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
    im = ax.imshow(obs, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), names, rotation=90, fontsize=6)
    ax.set_yticks(range(n), names, fontsize=6)
    fig.colorbar(im, ax=ax, label="Jaccard of final masks")
    _finish(plt, fig, out / "jaccard.png")

    labels = list(dict.fromkeys(r["label"] for r in runs))
    lines = ["| setting A | setting B | pairs | Jaccard | random masks | ratio |", "|---|---|---|---|---|---|"]
    for a, b in [(x, x) for x in labels] + list(combinations(labels, 2)):
        pairs = [(i, j) for i, j in combinations(range(n), 2)
                 if {runs[i]["label"], runs[j]["label"]} == {a, b} and (a != b or runs[i]["label"] == a)
                 and obs[i][j] == obs[i][j]]
        if not pairs:
            continue
        o = statistics.mean(obs[i][j] for i, j in pairs)
        e = statistics.mean(rnd[i][j] for i, j in pairs)
        lines.append(f"| {a} | {b if b != a else '(same, other seeds)'} | {len(pairs)} | {o:.3f} | {e:.3f} | "
                     f"{o / e if e else float('nan'):.2f}x |")
    atomic_write_text(out / "similarity.md", "Jaccard similarity of final masks, mean over pairs of runs.\n\n" +
                      "\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in labels:
        rs = [r for r in runs if r["label"] == label]
        pts = {}
        for r in rs:
            for st in r["summary"]["stages"][1:]:
                pts.setdefault(st["stage"], []).append((1 - st["sparsity"], st["test_acc"]))
        xs = [statistics.mean(p[0] for p in v) * 100 for v in pts.values()]
        ys = [statistics.mean(p[1] for p in v) * 100 for v in pts.values()]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("remaining weights % (prunable)")
    ax.set_ylabel("test accuracy %")
    ax.legend(fontsize=6)
    _finish(plt, fig, out / "accuracy.png")

    srows = []
    for r, name in zip(runs, names):
        for layer, v in structure(r["masks"][-1]).items():
            srows.append([name, layer] + [v[k] for k in ("density", "filters_empty", "filters_random", "channels_empty",
                                                         "channels_random", "kernels_empty", "kernels_random")])
    _write_csv(out / "structure.csv", ["run", "layer", "density", "filters_empty", "filters_random",
                                       "channels_empty", "channels_random", "kernels_empty", "kernels_random"], srows)
    if srows:
        fig, ax = plt.subplots(figsize=(2 + 0.5 * len(srows), 4))
        xs = range(len(srows))
        ax.bar([x - 0.2 for x in xs], [r[7] for r in srows], width=0.4, label="empty kernels")
        ax.bar([x + 0.2 for x in xs], [r[8] for r in srows], width=0.4, label="random expectation")
        ax.set_xticks(list(xs), [f"{r[0]} {r[1]}" for r in srows], rotation=90, fontsize=6)
        ax.set_ylabel("fraction of k x k kernels all zero")
        ax.legend()
        _finish(plt, fig, out / "structure.png")

    trows = []
    for r, name in zip(runs, names):
        run = RunPaths(r["dir"])
        dense, final = run.stage(DENSE) / MODEL, run.stage(r["stages"][-1]) / MODEL
        dist = weight_distance(read_safetensors(final)[0], read_safetensors(dense)[0], r["masks"][-1])
        cons = [overlap(a, b) for a, b in zip(r["masks"], r["masks"][1:])]
        trows.append([name, dist] + cons)
    # overlap |A n B| / min(|A|, |B|) rather than Jaccard: consecutive masks of a schedule differ in size, and
    # Jaccard of nested masks is just the density ratio; overlap is 1.0 exactly when a round kept only weights
    # the previous round had
    _write_csv(out / "stability.csv", ["run", "distance_to_dense"] +
               [f"overlap_round_{i + 1}_{i + 2}" for i in range(max(len(t) - 2 for t in trows))], trows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in trows:
        ax.plot(range(2, len(t)), t[2:], marker=".", label=t[0])
    ax.set_xlabel("round")
    ax.set_ylabel("overlap with the previous round's mask")
    ax.legend(fontsize=5)
    _finish(plt, fig, out / "stability.png")
    return lines

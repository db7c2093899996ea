"""Comparing finished runs: the Rethinking-style table, one row per setting, mean +- std over seeds.

Runs whose recipes differ only in ``seed`` form one setting. Columns: Unpruned (dense stage), Fine-tuned (the
pruning stages' final model), then every control the runs have (Scratch-E, Scratch-B, lottery reset,
guided), plus the pruned model's size. A classifier's cells are top-1 accuracy; a language model's are its
held-out perplexity (the comparison the Rethinking table makes for them; next-token accuracy is in the CSV).
``compare_runs`` returns rows; ``write_table`` writes markdown and CSV.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics
from pathlib import Path


from ..errors import ConfigError
from ..io import atomic_write_text
from .records import load_summary
from .yaml_input import read_yaml_file
from .paths import RunPaths

COLUMNS = [("dense_acc", "Unpruned"), ("finetune", "Fine-tuned"), ("scratch_e", "Scratch-E"),
           ("scratch_b", "Scratch-B"), ("lottery_reset", "Lottery reset"), ("guided", "Guided")]


def _setting(run_dir: Path) -> tuple[str, str]:
    """(key, label) of a run's setting: its recipe without the seed."""
    path = RunPaths(run_dir).recipe
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a prunelab run folder (no {path.name})")
    recipe = read_yaml_file(path) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path} is not a recipe (a mapping of sections)")
    recipe.pop("seed", None)
    if isinstance(recipe.get("data"), dict):
        recipe["data"].pop("root", None)  # where the data was found is not part of a setting
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]
    p = recipe.get("prune") or {}
    method = p.get("method")
    if isinstance(method, dict):
        opts = ", ".join(f"{k}={v}" for k, v in method.items() if k != "name" and v not in (None, False, {}, []))
        method = f"{method.get('name')}({opts})" if opts else method.get("name")
    label = f"{recipe.get('name')}: {method} {p.get('sparsity', 0):g}" if p else str(recipe.get("name"))
    return key, label


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"mean +- std"`` of ``values x scale`` (sample std); one value alone (one seed has no spread, and
    "+- 0.00" would claim one); "-" for none."""
    if not values:
        return "-"
    m = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} +- {statistics.stdev(values) * scale:.{digits}f}"


def compare_runs(run_dirs: list[str | Path]) -> list[dict]:
    """One row per setting: ``setting`` (label), ``runs`` (one dict per run: seed, accuracies by column
    name or None, params, flops of the pruned model, the shrunk one when there is one)."""
    groups: dict[str, dict] = {}
    for d in map(Path, run_dirs):
        key, label = _setting(d)
        summary = RunPaths(d).summary
        if not summary.is_file():
            raise ConfigError(f"{d} has not finished (no {summary.name}); run it to the end first")
        s = load_summary(d)
        controls = s.get("controls") or {}
        sh = s.get("shrunk")
        run = {"seed": s["seed"], "task": s.get("task", "classification"), "dense_acc": s.get("dense_acc"),
               "finetune": s.get("pruned_acc"),
               **{c: controls[c]["test_acc"] if c in controls else None for c, _ in COLUMNS[2:]},
               "ppl": {"dense_acc": s.get("dense_ppl"), "finetune": s.get("pruned_ppl"),
                       **{c: controls[c].get("test_ppl") for c, _ in COLUMNS[2:] if c in controls}},
               "params": sh["params"] if sh else s["params_nonzero"],
               "flops": sh["flops"] if sh else s["flops_nonzero"]}
        group = groups.setdefault(key, {"setting": label, "runs": [], "dirs": {}})
        if run["seed"] in group["dirs"]:  # the same folder twice, or a copy of it: one seed, not two
            raise ConfigError(f"{d} and {group['dirs'][run['seed']]} are the same run ({label}, seed {run['seed']}); "
                              "give each run once")
        group["dirs"][run["seed"]] = d
        group["runs"].append(run)
    for g in groups.values():
        del g["dirs"]
    return list(groups.values())


def _lm(row: dict) -> bool:
    return all(r["task"] == "causal_lm" for r in row["runs"])


def heading(rows: list[dict]) -> str:
    """What the tables' cells are: top-1 accuracy, or held-out perplexity for language models."""
    kinds = {_lm(r) for r in rows}
    what = {frozenset([False]): "Top-1 accuracy %", frozenset([True]): "Held-out perplexity (lower is better)"}.get(
        frozenset(kinds), "Top-1 accuracy % for classifiers, held-out perplexity (lower is better) for language models")
    return f"{what}, mean +- std over seeds."


def _col(row: dict, c: str) -> list[float]:
    """The row's values of column ``c``: perplexities of a language model's runs, accuracies otherwise."""
    if _lm(row):
        return [v for r in row["runs"] if (v := r["ppl"].get(c)) is not None]
    return [r[c] for r in row["runs"] if r[c] is not None]


def table_lines(rows: list[dict]) -> tuple[list[str], list[str]]:
    """Markdown lines of the table, and the names of the columns it shows."""
    cols = [(c, h) for c, h in COLUMNS if any(_col(r, c) for r in rows)]
    lines = ["| setting | seeds | " + " | ".join(h for _, h in cols) + " | params | FLOPs |",
             "|---|---|" + "---|" * len(cols) + "---|---|"]
    for r in rows:
        scale = 1 if _lm(r) else 100
        lines.append(f"| {r['setting']} | {len(r['runs'])} | " + " | ".join(mean_std(_col(r, c), scale) for c, _ in cols) +
                     f" | {statistics.mean(x['params'] for x in r['runs']):,.0f} | "
                     f"{statistics.mean(x['flops'] for x in r['runs']):,.0f} |")
    return lines, [h for _, h in cols]


def write_table(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Write ``rethinking.md`` and ``rethinking.csv`` (one line per setting and seed) into ``out_dir``."""
    out = Path(out_dir)
    lines, _ = table_lines(rows)
    md = out / "rethinking.md"
    atomic_write_text(md, heading(rows) + "\n\n" + "\n".join(lines) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["setting", "seed"] + [c for c, _ in COLUMNS] + ["params", "flops"] + [f"{c}_ppl" for c, _ in COLUMNS])
    for r in rows:
        for x in r["runs"]:
            w.writerow([r["setting"], x["seed"]] + ["" if x[c] is None else x[c] for c, _ in COLUMNS] +
                       [x["params"], x["flops"]] + ["" if x["ppl"].get(c) is None else x["ppl"][c] for c, _ in COLUMNS])
    path = out / "rethinking.csv"
    atomic_write_text(path, buf.getvalue())
    return [md, path]

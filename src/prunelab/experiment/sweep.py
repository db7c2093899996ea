"""Sweeps: a grid of recipe overrides x seeds, run as independent runs in parallel processes on one machine.

``prunelab sweep RECIPE --grid prune.sparsity=0.9,0.95 --grid prune.method=magnitude,random --seeds 3 --jobs 2``
expands the grid (the cartesian product of every ``--grid`` key's values, values split at top-level commas so
YAML flow values like ``{name: imp, rewind: init}`` stay whole), adds ``seed=0..S-1``, skips runs whose folder
already holds a summary, runs the rest in ``--jobs`` worker processes (torch threads = cores / jobs), and
prints one table. ``--print-commands`` prints one ``prunelab run`` command per point instead, for a cluster
scheduler's job array (see the README).
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import shlex
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..errors import ConfigError, PrunelabError
from .compare import mean_std
from .paths import RunPaths


def split_values(text: str) -> list[str]:
    """Split ``a,b,{x: 1, y: 2},[1, 2]`` at commas outside brackets and braces."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    if depth != 0 or any(v == "" for v in out):
        raise ConfigError(f"grid values {text!r} are not a comma-separated list")
    return out


def expand_grid(grid: list[str], seeds: int) -> list[list[str]]:
    """Override lists, one per grid point and seed (seed last, so points group together)."""
    axes = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"grid item {item!r} must look like key=value1,value2")
        axes.append([f"{key.strip()}={v}" for v in split_values(values)])
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    return [list(point) + [f"seed={s}"] for point in itertools.product(*axes) for s in range(seeds)]


def _run_point(job: tuple) -> dict:
    recipe_name, overrides, runs_dir, threads = job
    import torch

    torch.set_num_threads(threads)
    from . import Runner, load_recipe, run_dir_for

    t0 = time.perf_counter()
    try:
        recipe = load_recipe(recipe_name, overrides)
        s = Runner(recipe, run_dir_for(recipe, runs_dir), progress=False, log=lambda m: None).run()
    except PrunelabError as exc:
        return {"overrides": overrides, "status": f"failed: {exc}"}
    return {"overrides": overrides, "status": "ran", "summary": s, "seconds": time.perf_counter() - t0}


def plan(recipe_name: str, grid: list[str], seeds: int, runs_dir: str | Path, fixed: list[str] = ()) -> list[dict]:
    """Every point (``fixed`` overrides first) with its run folder and whether it already finished; every
    recipe is validated here, before anything runs."""
    from . import load_recipe, run_dir_for

    points = []
    for point in expand_grid(grid, seeds):
        over = list(fixed) + point
        d = run_dir_for(load_recipe(recipe_name, over), runs_dir)
        points.append({"overrides": over, "point": point[:-1], "run_dir": d, "done": RunPaths(d).seal.is_file()})
    return points


def commands(recipe_name: str, points: list[dict], runs_dir: str | Path) -> list[str]:
    return [" ".join(["prunelab", "run", shlex.quote(recipe_name), *map(shlex.quote, p["overrides"]),
                      "--runs-dir", shlex.quote(str(runs_dir)), "--no-progress"]) for p in points]


def run_sweep(recipe_name: str, points: list[dict], runs_dir: str | Path, jobs: int, log=print,
              threads: int | None = None) -> list[dict]:
    """Run the unfinished points in ``jobs`` processes of ``threads`` torch threads each (default: cores / jobs,
    so the processes do not oversubscribe the machine); returns one row per point (finished ones read back)."""
    from .records import load_summary

    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    todo = [p for p in points if not p["done"]]
    log(f"{len(points)} runs: {len(points) - len(todo)} already finished, {len(todo)} to run in {jobs} processes")
    results = {}
    if todo:
        # spawned, not forked: a child forked from a process whose torch (OpenMP) threads have run can hang in
        # its first parallel op (seen: a curve test's workers stuck in a Linear's initialisation under CI)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for res in pool.map(_run_point, [(recipe_name, p["overrides"], str(runs_dir), threads) for p in todo]):
                results[tuple(res["overrides"])] = res
                log(f"  {' '.join(res['overrides'][-len(todo[0]['point']) - 1:])}: {res['status']}")
    rows = []
    for p in points:
        res = results.get(tuple(p["overrides"]))
        if res is None:
            res = {"status": "skipped (finished before)", "summary": load_summary(p["run_dir"])}
        rows.append({"overrides": p["overrides"], "point": p["point"], "run_dir": str(p["run_dir"]), **res})
    return rows


def table(rows: list[dict]) -> list[str]:
    """Markdown: one line per grid point, accuracy and compression mean +- std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r["point"]), []).append(r)
    lines = ["| point | seeds | dense acc % | pruned acc % | compression (prunable) | status |",
             "|---|---|---|---|---|---|"]
    for key, rs in groups.items():
        ok = [r["summary"] for r in rs if "summary" in r]
        comp = [s["compression_prunable"] for s in ok if s.get("compression_prunable")]
        status = ", ".join(sorted({r["status"].split(":")[0] for r in rs}))
        lines.append(f"| {' '.join(key) or '(recipe as is)'} | {len(rs)} | "
                     f"{mean_std([s['dense_acc'] for s in ok if s.get('dense_acc') is not None], 100)} | "
                     f"{mean_std([s['pruned_acc'] for s in ok if s.get('pruned_acc') is not None], 100)} | "
                     f"{mean_std(comp, 1, 1) + 'x' if comp else '-'} | {status} |")
    return lines


__all__ = ["expand_grid", "plan", "run_sweep", "table", "commands", "split_values"]

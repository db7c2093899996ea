"""Checking a run folder's artifacts against what was written, before anything reuses them.

Every checkpoint's state file lists the SHA-256 and size of the files written beside it
(:func:`~prunelab.experiment.checkpoint.verify_checkpoint`). :func:`check_run` checks every stage of a run's plan
and its summary; :func:`require_intact` turns the first problem into one sentence saying what to run;
:func:`invalidate_damaged` is what a resumed run does: a finished stage whose files no longer match is removed
with every stage after it (they were computed from it) and the summary, so that they are recomputed, and nothing
else is touched.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError
from . import paths
from .checkpoint import verify_checkpoint
from .context import RunContext
from .plan import plan
from .records import SummaryRecord, read_record, seal_problems


def check_stages(ctx, stages) -> list[tuple[str, Path, list[str]]]:
    """(stage, folder, problems) of every checkpoint folder of ``stages`` with a problem, in plan order. A stage
    folder replaced by a file, a link or a link loop is a problem of its own (nothing prunelab wrote)."""
    out = []
    for stage in stages:
        for folder in stage.folders(ctx):
            if _in_the_way(folder):
                out.append((stage.name, folder, [IN_THE_WAY]))
                continue
            problems = verify_checkpoint(folder)
            if problems:
                out.append((stage.name, folder, problems))
    return out


IN_THE_WAY = "is a file or a link where the run's folder belongs (prunelab removes only folders it wrote): move it away"


def _in_the_way(folder: Path) -> bool:
    return folder.is_symlink() or (folder.exists() and not folder.is_dir())


def _started(ctx, stage) -> bool:
    """A stage with at least one of its checkpoints complete (so a missing or damaged other one is damage)."""
    return any(paths.is_complete(f) and f.is_dir() and not f.is_symlink() for f in stage.folders(ctx))


def check_run(run_dir: str | Path) -> list[tuple[str, list[str]]]:
    """Every problem of a finished run folder: (what, problems) per stage folder and for the summary."""
    run = paths.RunPaths(Path(run_dir))
    if not run.recipe.is_file():
        raise CheckpointError(f"{run.root} is not a run folder (no {run.recipe.name})")
    ctx = RunContext.from_folder(run.root)  # its own recipe.yaml; unfinished runs are checked as far as they got
    out = [(str(folder.relative_to(run.root)), problems) for _, folder, problems in check_stages(ctx, plan(ctx))]
    problems = seal_problems(run) if run.summary.is_file() else []
    if run.summary.is_file() and not problems:
        try:
            read_record(SummaryRecord, run.summary)
        except CheckpointError as exc:
            problems = [str(exc)]
    if not run.summary.is_file():
        problems = [f"{run.summary.name} is missing (the run did not finish)"]
    if problems:
        out.append((run.summary.name, problems))
    return out


def rerun_hint(root: Path) -> str:
    return f"`prunelab run {paths.RunPaths(root).recipe} --runs-dir {root.parent}`"


def require_intact(ctx, stages) -> None:
    """CheckpointError naming the first damaged or missing artifact of a finished run and what to run."""
    bad = check_stages(ctx, stages)
    if bad:
        name, folder, problems = bad[0]
        if problems[0] == IN_THE_WAY:
            raise CheckpointError(f"{folder} {IN_THE_WAY}, then run {rerun_hint(ctx.paths.root)}")
        raise CheckpointError(f"{folder}: {problems[0]}; run {rerun_hint(ctx.paths.root)} to recompute stage "
                              f"{name} and the stages after it")


def invalidate_damaged(ctx, stages, log: Callable[[str], None]) -> None:
    """Remove the first finished stage whose files do not match their record (or the first missing one that later
    stages were computed from), every later stage, and the summary (see the module docstring)."""
    names = [s.name for s in stages]
    problems_found = check_stages(ctx, stages)
    for name, folder, problems in problems_found:  # nothing is removed while anything is in the way
        if problems[0] == IN_THE_WAY:
            raise CheckpointError(f"{folder} {IN_THE_WAY}, then rerun")
    for name, folder, problems in problems_found:
        i = names.index(name)
        if not any(_started(ctx, st) for st in stages[i:]):
            continue  # an unfinished stage with nothing after it is simply run again
        log(f"stage {name}: {problems[0]} in {folder}; recomputing it and the stages after it")
        for later in stages[names.index(name):]:
            for f in later.folders(ctx):
                if f.exists():
                    shutil.rmtree(f)
        ctx.paths.seal.unlink(missing_ok=True)
        ctx.paths.summary.unlink(missing_ok=True)
        return


#: Fields of a run's records that differ between two runs of one recipe: wall-clock times and the folder's path.
WALL_CLOCK = frozenset({"seconds", "wall_seconds", "run_dir"})


def comparable_contents(run_dir: str | Path) -> dict[str, object]:
    """Every file of a run folder keyed by its relative path, for comparing two runs of one recipe: tensors files
    (and any other) as bytes, JSON records and logs parsed with the :data:`WALL_CLOCK` fields removed. Two
    runs of a recipe, interrupted or not, must give equal contents."""
    import json

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in WALL_CLOCK}
        return [strip(x) for x in v] if isinstance(v, list) else v
    root, out = Path(run_dir), {}
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.name == ".lock":
            continue
        rel = str(f.relative_to(root))
        if f.name == "seal.json" and f.parent == root:  # digests of records with wall-clock times: which files
            out[rel] = sorted(json.loads(f.read_text(encoding="utf-8")))
        elif f.suffix == ".json":
            out[rel] = strip(json.loads(f.read_text(encoding="utf-8")))
        elif f.suffix == ".jsonl":
            out[rel] = [strip(json.loads(line)) for line in f.read_text(encoding="utf-8").splitlines()]
        else:
            out[rel] = f.read_bytes()
    return out

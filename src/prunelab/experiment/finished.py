"""Opening finished runs: the one way the commands that read a run (export, attack, eval, show, bench) get at it,
after every artifact was checked against the digests recorded when it was written."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..masks import Masks
from .checkpoint import load_checkpoint
from .context import RunContext
from .paths import RunPaths
from .plan import final_stage, plan
from .verify import require_intact


def open_finished(run_dir: str | Path, data_root: str | None = None) -> RunContext:
    """The context of a finished run folder whose artifacts are intact: CheckpointError, saying what to run, if it
    is unfinished or any checkpoint's files (or its summary and recipe) differ from what was written
    (see :mod:`.verify`)."""
    paths = RunPaths(Path(run_dir))
    paths.require_finished()
    ctx = RunContext.from_folder(paths.root, data_root)
    require_intact(ctx, plan(ctx))
    return ctx


def load_final(ctx: RunContext) -> tuple[nn.Module, Masks | None]:
    """The run's final model (the last pruning stage's weights) and its masks (None for a dense run)."""
    model = ctx.build_model()
    masks, _ = load_checkpoint(ctx.paths.stage(final_stage(plan(ctx))), model, restore_rng=False)
    return model, masks

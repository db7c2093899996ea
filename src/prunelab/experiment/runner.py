"""The experiment runner: a recipe becomes a plan of stages, and the stages a run folder that resumes where it
stopped (see :mod:`prunelab.experiment.stages` for the stages, :mod:`~prunelab.experiment.paths` for the
folder).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import nn

from ..calibration.pipeline import check_named_blocks
from ..errors import CheckpointError, ConfigError, first_line
from ..io import atomic_write_text
from . import paths
from .context import RunContext
from .distributed import barrier
from .schema import Recipe
from .plan import plan
from .stages import Stage, prepare_event
from .records import load_summary
from .lock import RunLock
from .verify import invalidate_damaged
from .summary import summarize


def run_dir_for(recipe: Recipe, runs_root: str | Path) -> Path:
    """``RUNS_ROOT/NAME-HASH``: the same resolved recipe always maps to the same folder, inside ``runs_root``
    whatever the name (see :func:`~prunelab.experiment.paths.run_folder`)."""
    return paths.run_folder(runs_root, recipe.name, recipe.fingerprint())


def check_runs(model: nn.Module, ctx: RunContext) -> None:
    """ConfigError, with the first line of what failed, when the model cannot run one example input of the
    recipe's data (a config whose parts disagree, such as more key/value heads than heads)."""
    try:
        with torch.no_grad():
            model.eval()(ctx.example_inputs())
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError, AttributeError) as exc:
        first = first_line(exc, 200)
        raise ConfigError(f"model {ctx.recipe.model.name} cannot run on one input of {ctx.recipe.data.name} "
                          f"(shape {tuple(ctx.spec.input_shape)}): {type(exc).__name__}: {first}") from None
    finally:
        model.train()


def check_sharded_pruning(recipe: Recipe, pruner, stages: list[Stage]) -> None:
    """ConfigError when a stage trained under ``parallel: fsdp`` would have to decide masks while it trains:
    sharded ranks hold slices of each weight, and a decision reads whole ones (the cubic schedule prunes
    during training; a gradient criterion accumulates its scores there). Rounds prune between trainings, on
    whole weights, and retrain sharded."""
    if recipe.retrain_config().parallel != "fsdp" and recipe.retrain_config(final=True).parallel != "fsdp":
        return
    name = pruner.method.name
    if any(s.name == paths.GRADUAL for s in stages):
        raise ConfigError("retraining under parallel fsdp keeps the masks fixed, but the cubic schedule prunes "
                          "while training: use an iterative or oneshot schedule, or parallel ddp")
    if pruner.method.criterion_.needs_gradients:
        raise ConfigError(f"method {name} scores weights by gradients gathered while retraining, which a sharded "
                          "rank holds only a slice of: retrain with parallel ddp")


class Runner:
    """Runs (or resumes) one recipe in ``run_dir``; ``log`` receives one line per event."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print, stop_after: str | None = None, share_dense: bool = True) -> None:
        self.ctx = RunContext(recipe, run_dir, log=log, progress=progress, share_dense=share_dense)
        self.stop_after = stop_after

    @property
    def stages(self) -> list[Stage]:
        return plan(self.ctx)

    def run(self) -> dict:
        """Run every stage not yet complete, then write and return summary.json's content."""
        ctx = self.ctx
        dev = ctx.recipe.device
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} was asked for but CUDA is not available here; add device=cpu")
        try:  # any other device this torch build or machine lacks (mps, xpu, a typo) is one sentence too
            torch.empty(0, device=dev)
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"device {dev!r} cannot be used here ({first_line(exc, 120)}); "
                              "add device=cpu") from None
        from ..training import speed

        speed.check(ctx.recipe.train, dev)  # fp16 on the CPU, compile unsupported: before any stage runs
        stages = self.stages
        if self.stop_after is not None and self.stop_after not in [s.name for s in stages]:
            raise ConfigError(f"--stop-after {self.stop_after!r} is not a stage of this run; its stages: "
                              f"{', '.join(s.name for s in stages)}")
        model = ctx.build_model()
        check_runs(model, ctx)  # an inconsistent model (or one for other inputs) fails here, in one sentence
        if ctx.recipe.prune is not None:  # fail on a bad method or target before any training
            pruner = ctx.build_pruner(model)
            check_sharded_pruning(ctx.recipe, pruner, stages)
            cal = ctx.recipe.prune.calibration
            if cal is not None and cal.sequential_targets and pruner.needs.calibration is not None:
                check_named_blocks(model, pruner.params, cal.sequential_targets, ctx.example_inputs(),
                                   pruner.needs.calibration.sequential)
        distill = ctx.recipe.prune.distill if ctx.recipe.prune is not None else None
        if distill is not None:
            if not ctx.dense_trained:
                raise ConfigError("prune.distill needs a trained dense model to distil from, but train.epochs is 0 "
                                  "and the model is not loaded from a folder; train it (train.epochs) or remove "
                                  "prune.distill")
            if distill.hidden:
                from ..training.distill import match_layers

                match_layers(model, distill.hidden)
        ctx.paths.root.mkdir(parents=True, exist_ok=True)
        with RunLock(ctx.paths.root) if ctx.main else nullcontext():  # one process writes a run folder
            try:
                return self._run_stages(stages)
            finally:
                ctx.close()

    def _run_stages(self, stages: list[Stage]) -> dict:
        ctx = self.ctx
        ctx.loggers  # noqa: B018 - opened first: a tracker that is not installed stops the run before any stage
        if ctx.main:  # with the lock held, a temporary file is what a killed process left mid-write
            for tmp in ctx.paths.root.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        if ctx.main and not ctx.paths.recipe.exists():
            atomic_write_text(ctx.paths.recipe, yaml.safe_dump(ctx.resolved_recipe().model_dump(mode="json"),
                                                               sort_keys=False))
        if ctx.main:
            invalidate_damaged(ctx, stages, ctx.log)
            if paths.is_complete(ctx.paths.stage(paths.DENSE)):  # resuming: the same data as the dense training's
                ctx.check_same_data(ctx.paths.stage(paths.DENSE))
        barrier()
        for stage in stages:
            if stage.done(ctx):
                ctx.log(f"stage {stage.name}: done, skipped")
            else:
                missing = [p for p in stage.inputs(ctx) if not paths.is_complete(p)]
                if missing:
                    raise CheckpointError(f"stage {stage.name} starts from {missing[0]}, which is incomplete; "
                                          "delete the stages after it and rerun")
                metrics = ctx.paths.stage_metrics(stage.name)
                if ctx.main and metrics.exists():
                    metrics.unlink()  # a killed attempt's partial metrics
                t0 = time.perf_counter()
                stage.run(ctx)
                ctx.log(f"stage {stage.name}: finished in {time.perf_counter() - t0:.1f}s")
            barrier()  # the other ranks read what rank 0 wrote
            if self.stop_after == stage.name:
                return {}
        summary = summarize(ctx, stages) if ctx.main else {}
        barrier()
        return summary if ctx.main else load_summary(ctx.paths.root)

    def dry_run(self) -> dict:
        """Train (or reuse) the dense stage, then decide the final masks in memory, without retraining.

        Returns the pruner's summary (per-layer rows with units kept) plus ``plan`` when the method
        reports one; nothing is written beyond the dense stage.
        """
        ctx = self.ctx
        if ctx.recipe.prune is None:
            raise ConfigError("a dry run needs a recipe with a prune section")
        self.stop_after = paths.DENSE
        self.run()
        model = ctx.build_model(checkpoint=ctx.paths.stage(paths.DENSE))
        pruner = ctx.build_pruner(model, ctx.schedule, auto_prune=False)
        prepare_event(ctx, model, pruner)
        pruner.prune_event(len(ctx.schedule.events()) - 1)
        out = pruner.summary()
        out["plan"] = pruner.history[-1].get("plan")
        out["rounds"] = sum(s.pruning for s in self.stages) - 1
        return out


def trained_dense(recipe: Recipe, runs_root: str | Path) -> tuple[RunContext, nn.Module]:
    """(the run's context, its dense model) for ``recipe`` under ``runs_root``: the dense stage trained, or
    reused when it is there (shared with every recipe of the same dense training), quietly."""
    run_dir = run_dir_for(recipe, runs_root)
    Runner(recipe, run_dir, progress=False, log=lambda m: None, stop_after=paths.DENSE).run()
    ctx = RunContext(recipe, run_dir, log=lambda m: None, progress=False)
    return ctx, ctx.build_model(checkpoint=ctx.paths.stage(paths.DENSE))


__all__ = ["Runner", "run_dir_for", "load_summary", "trained_dense"]

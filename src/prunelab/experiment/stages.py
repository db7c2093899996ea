"""Stages as objects: what a run does, step by step, each with its inputs, its output folder and a completion
test, planned once from the recipe and the engine's schedule.

A plan is ``dense`` (train the dense model; its initial weights are kept for rewinding), then either one
``round`` stage per event of the schedule (prune to the event's target, retrain) or one ``gradual`` stage (prune
on the cubic schedule while training), then, for channel methods, ``shrunk``, then the recipe's controls
(:mod:`prunelab.experiment.controls`). Every stage starts from its input checkpoints, in an uninterrupted run
as in a resumed one, so both end bit-identical on CPU. A stage whose output checkpoint is complete is skipped.
"""
from __future__ import annotations

import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_bytes
from ..models import reinit
from ..pruner import Pruner
from ..registry import Registry
from ..engine.schedules import Cubic
from ..training.tasks import get_task
from . import paths
from .checkpoint import load_checkpoint, load_method_state, verify_checkpoint
from .context import SCRATCH_SEED, RunContext
from .distributed import barrier, check_same
from .lock import RunLock


class Stage:
    """One step of a run. ``name`` is its folder under ``stages/``; ``run`` writes that folder's checkpoint
    (``state.json`` last), which is the completion test; ``inputs`` are the checkpoints it starts from.
    ``pruning`` marks the stages of the dense -> pruned progression (they make the summary's stage table)."""

    pruning: ClassVar[bool] = False
    name: str

    def inputs(self, ctx: RunContext) -> list[Path]:
        return []

    def done(self, ctx: RunContext) -> bool:
        """Every checkpoint folder of the stage is complete (the dense stage's ``init/`` too)."""
        return all(paths.is_complete(f) for f in self.folders(ctx))

    def folders(self, ctx: RunContext) -> list[Path]:
        """The checkpoint folders this stage writes (checked by :mod:`prunelab.experiment.verify`)."""
        return [ctx.paths.stage(self.name)]

    def run(self, ctx: RunContext) -> None:
        raise NotImplementedError


STAGES: Registry[Stage] = Registry("stage", Stage)


@STAGES.register("dense")
@dataclass
class Dense(Stage):
    """Train the dense model from the recipe's seed; keep its initial weights (``init``) and, for late
    rewinding, its weights after ``rewind_step`` steps. Shared through the runs folder's dense cache."""

    rewind_step: int = 0
    name: str = field(default=paths.DENSE, init=False)
    pruning: ClassVar[bool] = True

    def _kept(self, root) -> list[Path]:
        return [root.init] + ([root.rewind(self.rewind_step)] if self.rewind_step else [])

    def folders(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage(self.name)] + self._kept(ctx.paths)

    def run(self, ctx: RunContext) -> None:
        r, folder = ctx.recipe, ctx.paths.stage(self.name)
        cache = ctx.paths.dense_cache(r.model.name, r.dense_fingerprint()) if ctx.share_dense else None
        # runs sharing a dense training take turns: the second waits for the first and reuses its result (under
        # torchrun every rank must decide alike, so there the cache is only read, never waited for)
        shared = cache is not None and ctx.dist.world == 1
        with RunLock(cache.root, wait=True, log=ctx.log) if shared else nullcontext():
            kept = [cache.dense] + self._kept(cache) if cache is not None else []
            if cache is not None and all(paths.is_complete(f) and not verify_checkpoint(f) for f in kept):
                ctx.check_same_data(cache.dense)
                if ctx.main:
                    for src, dst in zip(self._kept(cache) + [cache.dense], self._kept(ctx.paths) + [folder]):
                        copy_checkpoint(src, dst)
                ctx.log(f"stage {self.name}: reused the identical dense training in {cache.root}")
                return
            self._train(ctx, folder, cache)

    def _train(self, ctx: RunContext, folder: Path, cache) -> None:
        r = ctx.recipe
        t0 = time.perf_counter()
        # The dense stage's own draws (dropout, anything not seeded by the data loader) start from the recipe's
        # seed, in torch, Python and NumPy alike (their states are saved with every checkpoint, so two runs of a
        # recipe write the same bytes); later stages restore the RNG saved by the stage before them.
        torch.manual_seed(r.seed)
        random.seed(r.seed)
        np.random.seed(r.seed % 2**32)
        model = ctx.build_model()
        ctx.save(ctx.paths.init, model, extra={"note": "initial weights, for rewinding"})
        opt = ctx.optimizer(model, r.train)
        hooks = []
        if self.rewind_step:
            hooks.append(SaveAtStep(self.rewind_step, ctx.paths.rewind(self.rewind_step), ctx, model))
        trained = ctx.trainer(model, opt, r.train, None, self.name, hooks)
        trained.fit()
        barrier()
        if hooks and not paths.is_complete(ctx.paths.rewind(self.rewind_step)):
            raise ConfigError(f"rewind_step {self.rewind_step} is beyond the dense training's "
                              f"{r.train.epochs * len(ctx.data.train)} steps")
        ctx.save(folder, model, None, opt, extra=ctx.stage_record(model, None, t0, trained, data=ctx.data_identity()))
        if cache is not None and ctx.main:
            for src, dst in zip(self._kept(ctx.paths) + [folder], self._kept(cache) + [cache.dense]):
                copy_checkpoint(src, dst)


@dataclass
class _Pruning(Stage):
    """A stage that continues from ``source``'s checkpoint with a pruner, then trains and saves."""

    source: str = paths.DENSE
    final: bool = False
    pruning: ClassVar[bool] = True

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage(self.source)]

    def _train_and_save(self, ctx: RunContext, model, pruner: Pruner, t0: float) -> None:
        cfg = ctx.recipe.retrain_config(final=self.final)
        pre = ctx.evaluate(model)
        ctx.log(f"stage {self.name}: sparsity {pruner.masks.sparsity():.4f}, "
                f"accuracy before retraining {pre['acc']:.4f}")
        distill = ctx.recipe.prune.distill
        loss_fn = teacher = None
        if distill is not None and cfg.trains:  # the teacher: the run's dense model, from its checkpoint
            teacher = ctx.build_model(checkpoint=ctx.paths.stage(paths.DENSE)).to(ctx.recipe.device)
        opt = ctx.optimizer(model, cfg, pruner, teacher)
        if teacher is not None:
            from ..training.distill import Distillation

            loss_fn = Distillation(teacher, distill.alpha, distill.temperature, ctx.data.task, distill.hidden,
                                   distill.hidden_weight, student=model)
        trained = ctx.trainer(model, opt, cfg, pruner, self.name, loss_fn=loss_fn)
        trained.fit()
        if loss_fn is not None:
            loss_fn.close()
        check_same(pruner.masks, f"training in {self.name}")
        more = {"distill": distill.model_dump()} if loss_fn is not None else {}
        record = ctx.stage_record(model, pruner, t0, trained, acc_before_retrain=pre["acc"], **more)
        ctx.save(ctx.paths.stage(self.name), model, pruner.masks, opt, extra=record,
                 method_state=pruner.method.state_tensors())


@STAGES.register("round")
@dataclass
class Round(_Pruning):
    """Pruning round ``index`` (1-based): the schedule's event ``index - 1``, then retraining."""

    index: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or self.index < 1:
            raise ConfigError(f"a round's index counts from 1, got {self.index!r}")
        self.name = paths.round_stage(self.index)

    def run(self, ctx: RunContext) -> None:
        t0 = time.perf_counter()
        model = ctx.build_model()
        masks, state = load_checkpoint(ctx.paths.stage(self.source), model)  # RNG restored too
        pruner = ctx.build_pruner(model, ctx.schedule, auto_prune=False)
        if masks is not None:
            pruner.load_state(state.get("pruner", {}), masks,
                              method_state=load_method_state(ctx.paths.stage(self.source)))
        prepare_event(ctx, model, pruner)
        pruner.prune_event(self.index - 1)
        rewind(ctx, model, pruner, self.index)
        digests = check_same(pruner.masks, f"pruning in {self.name}")
        record = {"stage": self.name, "prune": pruner.history[-1]}
        if len(digests) > 1:
            record["rank_mask_digests"] = digests
        if ctx.main:
            append_jsonl(ctx.paths.stage_metrics(self.name), record)
        self._train_and_save(ctx, model, pruner, t0)


@STAGES.register("gradual")
@dataclass
class Gradual(_Pruning):
    """One stage that prunes on the cubic schedule while it trains (masks frozen after the schedule's end)."""

    name: str = field(default=paths.GRADUAL, init=False)
    final: bool = field(default=True, init=False)

    def run(self, ctx: RunContext) -> None:
        t0 = time.perf_counter()
        model = ctx.build_model()
        load_checkpoint(ctx.paths.stage(self.source), model)  # RNG restored too
        if not isinstance(ctx.schedule, Cubic):
            raise ConfigError("the gradual stage needs a cubic schedule")
        self._train_and_save(ctx, model, ctx.build_pruner(model, ctx.schedule), t0)


def prepare_event(ctx: RunContext, model, pruner: Pruner) -> None:
    """Hand the method what it declared it needs before an event: calibration batches (training inputs) and
    the loss gradients of ``gradient_batches`` training batches."""
    needs = pruner.needs
    if needs.calibration is not None:
        cal = ctx.recipe.prune.calibration
        pruner.calibrate(ctx.calibration_batches(), options=None if cal is None else cal.options(), progress=ctx.log,
                         targets=True)  # data sets yield pairs
    if not needs.gradient_batches:
        return
    model.train()
    device = ctx.recipe.device
    for i, (x, y) in enumerate(ctx.data.train):
        if i >= needs.gradient_batches:
            break
        model.zero_grad(set_to_none=True)
        get_task(ctx.data.task).loss(model(x.to(device)), y.to(device)).backward()
        pruner.after_backward()
    model.zero_grad(set_to_none=True)


def rewind(ctx: RunContext, model, pruner: Pruner, index: int) -> None:
    """Set the surviving weights to the method's rewind point after round ``index`` (see methods/imp.py)."""
    point = pruner.method.rewind_point()
    if point is None:
        return
    if point.to == "reinit":
        reinit(model, ctx.recipe.seed + SCRATCH_SEED + index)
    else:
        load_checkpoint(ctx.paths.init if point.to == "init" else ctx.paths.rewind(point.step), model,
                        restore_rng=False)
    pruner.set_masks(pruner.masks)  # pruned weights (and channel companions) back to zero


class SaveAtStep:
    """Trainer hook: save ``model`` (the module itself, not its DistributedDataParallel wrapper) after optimizer
    step ``step`` (the late-rewinding point)."""

    def __init__(self, step: int, folder: Path, ctx: RunContext, model) -> None:
        self.step, self.folder, self.ctx, self.model = step, folder, ctx, model

    def on_batch_end(self, trainer, step: int, loss: float) -> None:
        if step == self.step:
            self.ctx.save(self.folder, self.model, extra={"note": f"weights after {step} steps, for rewinding"})


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint folder file by file (atomically each), state.json last so it marks completion."""
    if not paths.is_complete(src):
        raise CheckpointError(f"{src} is not a complete checkpoint")
    files = sorted((p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.name == paths.STATE)
    for f in files:
        atomic_write_bytes(dst / f.name, f.read_bytes())


def append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")

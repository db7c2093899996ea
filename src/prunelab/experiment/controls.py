"""The stages after pruning: ``shrunk`` (channel methods) and the controls of Rethinking the Value of Network
Pruning (Liu et al., ICLR 2019), each trained on the final masks' architecture.

- ``shrunk``: the final model without its removed channels (:func:`prunelab.structure.surgery`), checked equal
  to the masked model, saved as weights + width manifest (``paths.RunPaths.shrunk_model``); a Hugging Face
  model as the stage's weights beside its smaller ``config.json`` (``paths.RunPaths.shrunk_config``), both
  listed with their digests, which ``export --format hf`` turns into a ``save_pretrained`` folder.
- ``control_scratch_e``: the pruned architecture from a fresh random init, trained as the dense model was
  (``train.epochs`` epochs, or ``train``'s step or token budget: the same tokens for a language model).
- ``control_scratch_b``: the same for ``FLOPs(full) / FLOPs(pruned)`` times as long (FLOPs measured, nonzero
  weights only): epochs with learning-rate milestones and step size scaled alike, or the step or token budget
  scaled; capped at ``scratch_b_cap`` times when set.
- ``control_lottery_reset``: the surviving weights reset to the run's own initial weights (``init``).
- ``control_guided``: stage-averaged widths of the pruned network (VGG, CIFAR ResNet), from scratch.

"The pruned architecture" is the shrunk model when the method removes channels, otherwise the original
architecture with the final masks held fixed. Sparsity training (``bn_l1``) is not applied to controls.
Each control is a stage kind of :data:`~prunelab.experiment.stages.STAGES`; its training draws start from
``seed + SCRATCH_SEED``, set at the start of the stage.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..analysis import count_flops, count_params
from ..errors import ConfigError
from ..export.shrunk import load_shrunk, model_spec, save_shrunk
from ..structure.surgery import shrink
from ..models import build_model, reinit
from . import paths
from .checkpoint import load_checkpoint, save_checkpoint
from .context import SCRATCH_SEED, RunContext
from .stages import STAGES, Stage

CONTROLS = ("scratch_e", "scratch_b", "lottery_reset", "guided")


@STAGES.register("shrunk")
@dataclass
class Shrunk(Stage):
    """Shrink the final pruned model (stage ``final``), verify it, save it with its width manifest."""

    final: str = paths.DENSE
    name: str = field(default=paths.SHRUNK, init=False)

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage(self.final)]

    def run(self, ctx: RunContext) -> None:
        if not ctx.main:
            return
        r, data = ctx.recipe, ctx.data
        model = ctx.build_model()
        masks, _ = load_checkpoint(ctx.paths.stage(self.final), model, restore_rng=False)
        t0 = time.perf_counter()
        small, widths = shrink(model, masks, ctx.example_inputs())
        if hasattr(small, "save_pretrained"):  # a transformers model stays one: its config beside the weights, both
            from ..io import atomic_write_text, state_bytes  # listed with their digests by the checkpoint

            ctx.paths.stage(self.name).mkdir(parents=True, exist_ok=True)
            atomic_write_text(ctx.paths.shrunk_config, small.config.to_json_string())
            nbytes = len(state_bytes(small.state_dict()))
        else:
            spec = model_spec(r.model.name, r.model.kwargs, data.input_shape, data.num_classes)
            nbytes = save_shrunk(ctx.paths.shrunk_model, small, widths, spec)
        params, flops = count_params(small), count_flops(small, data.input_shape, r.device, data.input_dtype)
        ev = ctx.evaluate(small)
        extra = {"test_acc": ev["acc"], "seconds": time.perf_counter() - t0, "bytes": nbytes,
                 "params": params["total"], "flops": flops["dense"], "changed_modules": len(widths)}
        if "ppl" in ev:
            extra["test_ppl"] = ev["ppl"]
        if hasattr(small, "save_pretrained"):
            extra["config"] = widths  # the config fields that changed
        save_checkpoint(ctx.paths.stage(self.name), small, extra=extra)
        ctx.log(f"stage {self.name}: {params['total']:,} parameters, {flops['dense']:,} FLOPs, accuracy {ev['acc']:.4f}")


def pruned_architecture(ctx: RunContext, final: str, source: str):
    """(model, pruner or None) of the pruned architecture with weights from ``source``: 'scratch' or 'init'."""
    r = ctx.recipe
    masks, _ = load_checkpoint(ctx.paths.stage(final), ctx.build_model(), restore_rng=False)
    if ctx.paths.shrunk_model.is_file() or ctx.paths.shrunk_config.is_file():
        if source == "scratch":
            model = load_shrunk_run(ctx)
            return reinit(model, r.seed + SCRATCH_SEED), None
        big = ctx.build_model(checkpoint=ctx.paths.init)
        ctx.fixed_pruner(big, masks)  # the initial biases and BatchNorm entries of removed channels go with them
        small, _ = shrink(big, masks, ctx.example_inputs())
        return small, None
    if source == "scratch":
        model = reinit(ctx.build_model(), r.seed + SCRATCH_SEED)
    else:
        model = ctx.build_model(checkpoint=ctx.paths.init)
    return model, ctx.fixed_pruner(model, masks)  # held fixed: the manual schedule never prunes


def load_shrunk_run(ctx: RunContext):
    """The run's shrunk model: a Hugging Face model from its smaller config and the stage's weights, or the
    weights + width manifest."""
    if ctx.paths.shrunk_config.is_file():
        from ..models.hf import _transformers

        tf = _transformers()
        folder = ctx.paths.stage(paths.SHRUNK)  # its files' digests were checked when the run was opened
        config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        model = tf.AutoModelForCausalLM.from_config(config)
        load_checkpoint(folder, model, restore_rng=False)
        return model.to(ctx.recipe.device)
    return load_shrunk(ctx.paths.shrunk_model, ctx.recipe.device)[0]


def scratch_b_budget(n: int, flops_full: int, flops_pruned: int, cap: float | None) -> int:
    """Scratch-B's budget of epochs, steps or tokens: ``n x FLOPs(full) / FLOPs(pruned)`` rounded, at most
    ``cap x n``, at least ``n``."""
    if flops_pruned <= 0:
        raise ConfigError("the pruned model has no FLOPs left; Scratch-B's budget is undefined")
    e = round(n * flops_full / flops_pruned)
    if cap is not None:
        e = min(e, math.floor(cap * n))
    return max(e, n)


def guided_widths(name: str, kwargs: dict, shrunk) -> dict:
    """Model kwargs whose per-stage widths are the averages of the shrunk model's widths in each stage."""
    convs = [m for m in shrunk.modules() if isinstance(m, torch.nn.Conv2d)]
    if name.startswith("vgg"):
        from ..models.vgg import CONFIGS

        cfg = kwargs.get("widths") or CONFIGS[name]
        outs, widths, stage = iter(m.out_channels for m in convs), [], []
        for v in list(cfg) + ["M"]:
            if v == "M":
                avg = round(statistics.mean(stage)) if stage else 0
                widths += [avg] * len(stage) + ["M"]
                stage = []
            else:
                stage.append(next(outs))
        return {**kwargs, "widths": widths[:-1]}
    if name.startswith("resnet"):
        mids = [b.conv1.out_channels for b in shrunk.layers]
        n = len(mids) // 3
        avg = [round(statistics.mean(mids[i * n:(i + 1) * n])) for i in range(3)]
        return {**kwargs, "widths": [w for w in avg for _ in range(n)]}
    raise ConfigError(f"guided widths are defined for the VGG and CIFAR ResNet families, not {name!r}")


def scratch_b_config(cfg, flops_full: int, flops_pruned: int, cap: float | None):
    """``cfg`` with Scratch-B's longer budget: its step or token budget scaled when it has one (a language
    model's tokens x the FLOP ratio), else its epochs, with learning-rate milestones and step size alike."""
    if cfg.budget:
        key = "max_steps" if cfg.max_steps is not None else "train_tokens"
        return cfg.model_copy(update={key: scratch_b_budget(getattr(cfg, key), flops_full, flops_pruned, cap)})
    epochs = scratch_b_budget(cfg.epochs, flops_full, flops_pruned, cap)
    scale = epochs / max(cfg.epochs, 1)
    return cfg.model_copy(update={"epochs": epochs, "step_size": max(1, round(cfg.step_size * scale)),
                                  "milestones": [m if m < 1 else m * scale for m in cfg.milestones]})


@dataclass
class Control(Stage):
    """One control of Rethinking the Value of Network Pruning, trained on the final masks' architecture."""

    kind: str = "scratch_e"
    final: str = paths.DENSE
    name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.kind not in CONTROLS:
            raise ConfigError(f"unknown control {self.kind!r}; valid: {', '.join(CONTROLS)}")
        self.name = paths.control_stage(self.kind)

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage(self.final)] + ([ctx.paths.init] if self.kind == "lottery_reset" else [])

    def run(self, ctx: RunContext) -> None:
        r, data = ctx.recipe, ctx.data
        t0 = time.perf_counter()
        torch.manual_seed(r.seed + SCRATCH_SEED)  # this stage's own training draws (see the module docstring)
        cfg = r.train.model_copy(update={"bn_l1": 0.0})
        extra: dict = {}
        if self.kind == "guided":
            if not ctx.paths.shrunk_model.is_file():
                raise ConfigError("the guided control needs a channel method (l1_filter, slimming): nothing was shrunk")
            small, _ = load_shrunk(ctx.paths.shrunk_model, r.device)
            kw = guided_widths(r.model.name, r.model.kwargs, small)
            model = build_model(r.model.name, data.input_shape, data.num_classes, seed=r.seed + SCRATCH_SEED, **kw)
            model, pruner = reinit(model, r.seed + SCRATCH_SEED).to(r.device), None  # the same draws as every control
            extra["widths"] = kw["widths"]
        else:
            model, pruner = pruned_architecture(ctx, self.final, "init" if self.kind == "lottery_reset" else "scratch")
        if self.kind == "scratch_b":
            flops_full = count_flops(ctx.build_model(), data.input_shape, r.device, data.input_dtype)["dense"]
            flops_pruned = count_flops(model, data.input_shape, r.device, data.input_dtype)["nonzero"]
            cfg = scratch_b_config(cfg, flops_full, flops_pruned, r.prune.scratch_b_cap)
            extra.update(flops_full=flops_full, flops_pruned=flops_pruned)
        opt = ctx.optimizer(model, cfg, pruner)
        trained = ctx.trainer(model, opt, cfg, pruner, self.name)
        trained.fit()
        extra.update(ctx.seen(trained))
        ev = ctx.evaluate(model)
        acc = ev["acc"]
        if "ppl" in ev:  # a language model: its held-out perplexity, the comparison the Rethinking table makes
            extra["test_ppl"] = ev["ppl"]
        ctx.save(ctx.paths.stage(self.name), model, pruner.masks if pruner else None, extra={
            "test_acc": acc, "epochs": cfg.epochs, "seconds": time.perf_counter() - t0,
            "params_nonzero": count_params(model)["nonzero"], **extra})
        ppl = f", perplexity {ev['ppl']:.2f}" if "ppl" in ev else ""
        seen = f"{extra['tokens']:,} tokens" if "tokens" in extra else f"{cfg.epochs} epochs"
        ctx.log(f"stage {self.name}: accuracy {acc:.4f}{ppl} after {seen}")


def _control_kind(kind: str):
    def build(final: str = paths.DENSE) -> Control:
        return Control(kind=kind, final=final)
    build.__doc__ = f"The {kind} control on the masks of stage ``final``."
    return build


for _kind in CONTROLS:  # each control is a stage kind of its own name
    STAGES.register(_kind)(_control_kind(_kind))

"""The stages after pruning: ``shrunk`` (channel methods) and the controls of Rethinking the Value of Network
Pruning (Liu et al., ICLR 2019), each trained on the final masks' architecture.

- ``shrunk``: the final model without its removed channels (:func:`prunelab.export.shrink`), checked equal
  to the masked model, saved as weights + width manifest (``stages/shrunk/shrunk.safetensors``).
- ``control_scratch_e``: the pruned architecture from a fresh random init, ``train.epochs`` epochs.
- ``control_scratch_b``: the same for ``train.epochs x FLOPs(full) / FLOPs(pruned)`` epochs (FLOPs measured,
  nonzero weights only), learning-rate milestones and step size scaled alike, capped at
  ``scratch_b_cap x train.epochs`` when set.
- ``control_lottery_reset``: the surviving weights reset to the run's own initial weights (``init``).
- ``control_guided``: stage-averaged widths of the pruned network (VGG, CIFAR ResNet), from scratch.

"The pruned architecture" is the shrunk model when the method removes channels, otherwise the original
architecture with the final masks held fixed. Sparsity training (``bn_l1``) is not applied to controls.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from ..analysis import count_flops, count_params
from ..errors import ConfigError
from ..export.shrink import load_shrunk, model_spec, save_shrunk, shrink
from ..models import build_model, reinit
from ..pruner import Pruner
from ..training import build_optimizer
from .checkpoint import load_checkpoint, save_checkpoint

SCRATCH_SEED = 10_007  # added to the run's seed: a fresh init, different from the one the large model had


def shrink_stage(runner, final: str, folder: Path) -> None:
    """Shrink the final pruned model, verify it, save it with its width manifest."""
    r, data = runner.recipe, runner._data()
    model = runner._model()
    masks, _ = load_checkpoint(runner._stage_dir(final), model, restore_rng=False)
    t0 = time.perf_counter()
    small, widths = shrink(model, masks, runner.example_inputs())
    spec = model_spec(r.model.name, r.model.kwargs, data.input_shape, data.num_classes)
    nbytes = save_shrunk(folder / "shrunk.safetensors", small, widths, spec)
    params, flops = count_params(small), count_flops(small, data.input_shape, r.device)
    from ..training import evaluate

    acc = evaluate(small, data.test, r.device)["acc"]
    save_checkpoint(folder, small, extra={"test_acc": acc, "seconds": time.perf_counter() - t0, "bytes": nbytes,
                                          "params": params["total"], "flops": flops["dense"],
                                          "changed_modules": len(widths)})
    runner.log(f"stage shrunk: {params['total']:,} parameters, {flops['dense']:,} FLOPs, accuracy {acc:.4f}")


def _pruned_architecture(runner, final: str, source: str):
    """(model, pruner or None) of the pruned architecture with weights from ``source``: 'scratch' or 'init'."""
    r = runner.recipe
    shrunk_dir = runner._stage_dir("shrunk")
    if (shrunk_dir / "shrunk.safetensors").is_file():
        if source == "scratch":
            model, _ = load_shrunk(shrunk_dir / "shrunk.safetensors", r.device)
            return reinit(model, r.seed + SCRATCH_SEED), None
        big = runner._model()
        load_checkpoint(runner.dir / "init", big, restore_rng=False)
        masks, _ = load_checkpoint(runner._stage_dir(final), runner._model(), restore_rng=False)
        # the initial biases and BatchNorm entries of removed channels go with them
        _fixed_pruner(runner, big).set_masks(masks)
        small, _ = shrink(big, masks, runner.example_inputs())
        return small, None
    model = runner._model()
    masks, _ = load_checkpoint(runner._stage_dir(final), runner._model(), restore_rng=False)
    if source == "scratch":
        reinit(model, r.seed + SCRATCH_SEED)
    else:
        load_checkpoint(runner.dir / "init", model, restore_rng=False)
    pruner = _fixed_pruner(runner, model)
    pruner.set_masks(masks)  # held fixed: the manual schedule never prunes
    return model, pruner


def _fixed_pruner(runner, model) -> Pruner:
    r = runner.recipe
    return Pruner(model, method=r.prune.method, schedule="manual", sparsity=r.prune.sparsity,
                  targets=r.prune.targets, seed=r.seed, example_inputs=runner.example_inputs())


def scratch_b_epochs(epochs: int, flops_full: int, flops_pruned: int, cap: float | None) -> int:
    """Scratch-B's budget: ``epochs x FLOPs(full) / FLOPs(pruned)`` rounded, at most ``cap x epochs``."""
    if flops_pruned <= 0:
        raise ConfigError("the pruned model has no FLOPs left; Scratch-B's budget is undefined")
    e = round(epochs * flops_full / flops_pruned)
    if cap is not None:
        e = min(e, math.floor(cap * epochs))
    return max(e, epochs)


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


def control_stage(runner, name: str, final: str, folder: Path, metrics_path: Path) -> None:
    r, data = runner.recipe, runner._data()
    kind = name.removeprefix("control_")
    t0 = time.perf_counter()
    cfg = r.train.model_copy(update={"bn_l1": 0.0})
    extra: dict = {}
    if kind == "guided":
        shrunk_dir = runner._stage_dir("shrunk")
        if not (shrunk_dir / "shrunk.safetensors").is_file():
            raise ConfigError("the guided control needs a channel method (l1_filter, slimming): nothing was shrunk")
        small, _ = load_shrunk(shrunk_dir / "shrunk.safetensors", r.device)
        kw = guided_widths(r.model.name, r.model.kwargs, small)
        model = reinit(build_model(r.model.name, data.input_shape, data.num_classes, **kw), r.seed + SCRATCH_SEED)
        model, pruner = model.to(r.device), None
        extra["widths"] = kw["widths"]
    else:
        model, pruner = _pruned_architecture(runner, final, "init" if kind == "lottery_reset" else "scratch")
    if kind == "scratch_b":
        full = runner._model()
        flops_full = count_flops(full, data.input_shape, r.device)["dense"]
        flops_pruned = count_flops(model, data.input_shape, r.device)["nonzero"]
        epochs = scratch_b_epochs(cfg.epochs, flops_full, flops_pruned, r.prune.scratch_b_cap)
        scale = epochs / max(cfg.epochs, 1)
        cfg = cfg.model_copy(update={
            "epochs": epochs, "step_size": max(1, round(cfg.step_size * scale)),
            "milestones": [m if m < 1 else m * scale for m in cfg.milestones]})
        extra.update(flops_full=flops_full, flops_pruned=flops_pruned)
    opt = build_optimizer(model, cfg)
    runner.trainer(model, opt, cfg, pruner, metrics_path, name).fit()
    from ..training import evaluate

    acc = evaluate(model, data.test, r.device)["acc"]
    runner.save(folder, model, pruner.masks if pruner else None, extra={
        "test_acc": acc, "epochs": cfg.epochs, "seconds": time.perf_counter() - t0,
        "params_nonzero": count_params(model)["nonzero"], **extra})
    runner.log(f"stage {name}: accuracy {acc:.4f} after {cfg.epochs} epochs")

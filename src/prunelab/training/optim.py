"""Optimizers, learning-rate schedules and training budgets.

The learning rate is a pure function of the epoch (``lr_at``), set at the start of every epoch, rather than
a stateful torch scheduler: nothing to checkpoint, and a resumed run gets exactly the same rates.

A training lasts ``epochs`` epochs, or, when a budget is given, ``max_steps`` optimizer steps or ``train_tokens``
training targets (the tokens a causal language model predicts, the samples of a classifier), which replace
``epochs``: recoveries of language models are then comparable across sequence lengths and batch sizes. Under a
budget the learning rate is set before every step, at the fractional epoch the step stands at, over the
budget's length in epochs (a cosine then reaches zero at the budget's end); warm-up, hold, step and milestone
positions stay in epochs of the training loader. (``data.train_tokens`` is another thing: how much text the
training split holds; a budget larger than it cycles through the split again.)
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn


class OptimConfig(BaseModel):
    """Training hyper-parameters (a recipe's ``train`` section, and ``prune.retrain`` overrides)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # bounds a typo cannot pass without it being one (1e308 would overflow the update into a raw optimizer error)
    epochs: int = Field(10, ge=0, le=100_000)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, le=1000)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    lr_schedule: Literal["constant", "step", "multistep", "cosine"] = "cosine"
    step_size: int = Field(30, ge=1, le=100_000)          # epochs between decays for "step"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])  # for "multistep": epochs, or fractions if < 1
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0, le=100_000)
    hold_epochs: int = Field(0, ge=0, le=100_000)  # constant lr for these epochs (after warmup), then the schedule over the rest
    bn_l1: float = Field(0.0, ge=0)  # Network Slimming's sparsity training: s * sign(gamma) added to BatchNorm scale grads
    max_steps: int | None = Field(None, ge=1, le=10 ** 9)  # a budget of optimizer steps (replaces epochs)
    train_tokens: int | None = Field(None, ge=1, le=10 ** 15)  # a budget of training targets (replaces epochs)
    # the forward pass and loss under autocast in this dtype (fp16: with a gradient scaler, CUDA only); the
    # weights, their masks and the optimizer state stay float32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False  # convolutional models and their image batches in channels-last memory
    compile: bool = False  # torch.compile the model for training (the pruner acts on the same parameters)
    log_every: int = Field(50, ge=1, le=10 ** 6)  # steps between reads of the running loss off the device
    # under torchrun: every rank holds the whole model (ddp) or a 1/world shard of it (fsdp, FSDP2: models whose
    # weights, gradients and optimizer state do not fit one device; see prunelab.training.parallel)
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # experiment trackers that get every epoch's metrics (prunelab.training.loggers): tensorboard, wandb, mlflow
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_budget(self) -> "OptimConfig":
        if self.max_steps is not None and self.train_tokens is not None:
            raise ValueError("give a training budget as max_steps or as train_tokens, not both")
        return self

    @property
    def budget(self) -> bool:
        """A step or token budget replaces ``epochs``."""
        return self.max_steps is not None or self.train_tokens is not None

    @property
    def trains(self) -> bool:
        """Whether this configuration trains at all (epochs > 0, or a budget)."""
        return self.budget or self.epochs > 0

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if any(m <= 0 for m in v) or v != sorted(v):
            raise ValueError("milestones must be positive and increasing")
        return v


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: OptimConfig, epoch: float, total: float | None = None, unit: float = 1.0) -> float:
    """The learning rate at (0-based, possibly fractional) ``epoch`` of a training of ``total`` epochs (default
    ``cfg.epochs``; a budget's length in epochs, fractional too), for an interval of ``unit`` epochs (one epoch,
    or one step of a budget): warm-up rises linearly, an interval getting the rate of its end."""
    total = cfg.epochs if total is None else total
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * min(1.0, (epoch + unit) / cfg.warmup_epochs)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.hold_epochs:
        if epoch < cfg.warmup_epochs + cfg.hold_epochs:
            return cfg.lr
        rest = cfg.model_copy(update={"hold_epochs": 0, "warmup_epochs": 0})
        left = total - cfg.warmup_epochs - cfg.hold_epochs
        return lr_at(rest, epoch - cfg.warmup_epochs - cfg.hold_epochs, left if left > 0 else 1, unit)
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.gamma ** (epoch // cfg.step_size)
    if cfg.lr_schedule == "multistep":
        marks = [m * total if m < 1 else m for m in cfg.milestones]
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in marks)
    # a run of only warm-up epochs never reaches the cosine; 1 keeps the division defined
    span = total - cfg.warmup_epochs if total > cfg.warmup_epochs else 1
    t = min(epoch - cfg.warmup_epochs, span)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / span))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr

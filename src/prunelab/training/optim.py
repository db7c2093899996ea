"""Optimizers and learning-rate schedules.

The learning rate is a pure function of the epoch (``lr_at``), set at the start of every epoch, rather than
a stateful torch scheduler: nothing to checkpoint, and a resumed run gets exactly the same rates.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
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


def lr_at(cfg: OptimConfig, epoch: int) -> float:
    """The learning rate for (0-based) ``epoch`` of a training of ``cfg.epochs`` epochs."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.hold_epochs:
        if epoch < cfg.warmup_epochs + cfg.hold_epochs:
            return cfg.lr
        rest = cfg.model_copy(update={"hold_epochs": 0, "warmup_epochs": 0,
                                      "epochs": max(1, cfg.epochs - cfg.warmup_epochs - cfg.hold_epochs)})
        return lr_at(rest, epoch - cfg.warmup_epochs - cfg.hold_epochs)
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.gamma ** (epoch // cfg.step_size)
    if cfg.lr_schedule == "multistep":
        marks = [m * cfg.epochs if m < 1 else m for m in cfg.milestones]
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in marks)
    total = max(1, cfg.epochs - cfg.warmup_epochs)
    t = epoch - cfg.warmup_epochs
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / total))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr

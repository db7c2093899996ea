"""What the training loop needs to run at the device's speed: autocast and a gradient scaler for the recipe's
``precision``, channels-last memory, ``torch.compile``, and copies of batches that do not wait for the host.

``fp16`` trains with a ``torch.amp.GradScaler`` and only on CUDA (float16 autocast on the CPU is slower than
float32 and its scaler exists for GPUs); ``bf16`` autocasts on any device that supports it. The weights,
masks and optimizer state stay in their own dtype, so masks enforced after each step stay exact.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ..errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_type(device) -> str:
    return torch.device(device).type


def sum_dtype(device) -> torch.dtype:
    """The dtype of running sums on ``device``: float64, as the host's sums were (MPS has none: float32)."""
    return torch.float32 if device_type(device) == "mps" else torch.float64


def check(cfg, device) -> None:
    """ConfigError in one sentence for a precision or compile option this device or build cannot honour."""
    kind = device_type(device)
    if cfg.precision == "fp16" and kind != "cuda":
        raise ConfigError(f"train.precision fp16 needs a CUDA device (its gradient scaler is for GPUs); on {kind} "
                          "use bf16 or fp32")
    if cfg.precision == "bf16" and kind == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    if cfg.compile:
        try:
            import torch._dynamo as dynamo

            ok = dynamo.is_dynamo_supported()
        except Exception:  # an unusual build: treat as unsupported
            ok = False
        if not ok:
            raise ConfigError("train.compile: torch.compile is not supported by this Python or torch build; set "
                              "train.compile false")


def autocast(cfg, device):
    """The autocast context of the forward pass and the loss (a no-op for fp32)."""
    if cfg.precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=DTYPES[cfg.precision])


def scaler(cfg, device):
    """A GradScaler for fp16, else None."""
    return torch.amp.GradScaler(device_type(device)) if cfg.precision == "fp16" else None


def prepare(model: nn.Module, cfg) -> nn.Module:
    """The module the loop calls: ``model`` in channels-last memory when asked (in place), compiled when asked
    (a wrapper sharing its parameters, so masks written to them hold)."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model) if cfg.compile else model


def to_device(t, device, channels_last: bool = False):
    """A batch tensor on ``device`` without waiting for the copy (pinned host memory makes it asynchronous),
    image batches (4-D) in channels-last memory when asked."""
    t = t.to(device, non_blocking=True)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t

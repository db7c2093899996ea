"""How many torch threads small work should use, for a user's own loop as for ``prunelab run``.

torch's default is one intra-op thread per core. On small layers a second thread buys little, and when another
process keeps a core busy the threads of one operation wait on each other at every layer: measured here, the
quickstart took 103 s with two threads against a busy core and 8 s with one, and a Pruner with calibration in a
user's loop was 5.8x slower with one core busy. So work under :data:`SMALL_MACS` multiply-accumulates per batch
(the model's per-sample MACs times the batch size) runs on one thread; larger work keeps torch's default.

The Pruner, calibration and shrink never change the process's thread count on their own (a library that did
would surprise every other part of the program); :func:`set_threads` is the one documented call that does:

    prunelab.set_threads(model, input_shape=(3, 32, 32), batch_size=64)   # before training or pruning
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import ConfigError
from ..limits import MAX_THREADS

SMALL_MACS = 1e9


def for_work(macs: float) -> tuple[int | None, str]:
    """(1, why) for work under :data:`SMALL_MACS` multiply-accumulates per batch, else (None: torch's default, why)."""
    if macs < SMALL_MACS:
        return 1, f"small work ({macs / 1e6:,.0f}M multiply-accumulates per batch): one thread is fastest"
    return None, f"{macs / 1e9:,.1f}G multiply-accumulates per batch: torch's default"


#: The most values one sample may hold for the thread policy's one trial pass (a 4096x4096 image in 3 channels).
MAX_SAMPLE_VALUES = 3 * 4096 * 4096


def _check_work(input_shape, batch_size) -> None:
    """ConfigError unless the shape is positive integers of a sample prunelab could hold and the batch positive."""
    from ..registry import check_count

    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ConfigError(f"input_shape must be a tuple of positive integers (one sample), got {input_shape!r}")
    values = 1
    for d in shape:
        values *= d
    if values > MAX_SAMPLE_VALUES:
        raise ConfigError(f"input_shape {shape} holds {values:,} values per sample, more than any input the "
                          f"thread policy measures ({MAX_SAMPLE_VALUES:,}); pass threads=N instead")
    check_count("batch_size", batch_size, high=1 << 20)


def set_threads(model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None, batch_size: int = 1,
                threads: int | None = None, dtype: torch.dtype = torch.float32) -> tuple[int, str]:
    """Set torch's intra-op thread count for work on ``model`` (inputs of ``input_shape`` per sample, in batches
    of ``batch_size``; ``dtype`` int64 for token ids) by the policy above, or to ``threads`` when given; an
    ``OMP_NUM_THREADS`` in the environment is left to rule. Returns (threads now in use, the reason in words)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise ConfigError(f"threads must be an integer from 1 to {MAX_THREADS} (4 per core), got {threads!r}")
        torch.set_num_threads(threads)
        return threads, "as asked"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS is set"
    if model is None or input_shape is None:
        raise ConfigError("set_threads needs the model and its input_shape (or threads=N)")
    _check_work(input_shape, batch_size)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        return torch.get_num_threads(), f"the model runs on {device}"
    from ..analysis import count_flops

    macs = count_flops(model, tuple(input_shape), str(device), dtype)["dense"] * int(batch_size)
    n, why = for_work(macs)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads(), why

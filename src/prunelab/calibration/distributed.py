"""Calibration across processes: each rank measures its share of the samples, and the sums are all-reduced
before any decision, so every rank decides what one process with all the samples decides (up to the order of
float summation)."""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import ConfigError
from .observers import InputStats


def world(enabled: bool | None) -> tuple[int, int]:
    """(rank, world size) of the calibration: (0, 1) unless torch.distributed is initialised with several
    ranks and ``enabled`` is not False."""
    dist = torch.distributed
    if enabled is False or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def reduce(stats: Mapping[str, InputStats], world_size: int) -> None:
    """Sum every rank's statistics in place (names in sorted order, the same on every rank): the counts in
    one tensor, then each accumulated sum."""
    if world_size < 2:
        return
    dist = torch.distributed
    names = sorted(stats)
    counts = [c for n in names for c in _counts(stats[n])]
    device = next((t.device for n in names for t in stats[n].tensors()), torch.device("cpu"))
    if dist.get_backend() == "nccl" and device.type != "cuda":
        raise ConfigError("calibration across nccl ranks needs the statistics on the GPU: give device='cuda'")
    c = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(c)
    it = iter(c.tolist())
    for n in names:
        s = stats[n]
        if s.sq is not None or s.cos is not None:
            s.rows = next(it)
        for m in (s.outputs, s.inputs):
            if m is not None:
                m.n = next(it)
        for t in s.tensors():
            dist.all_reduce(t)


def _counts(s: InputStats) -> list[int]:
    return ([s.rows] if s.sq is not None or s.cos is not None else []) + [m.n for m in (s.outputs, s.inputs) if m is not None]

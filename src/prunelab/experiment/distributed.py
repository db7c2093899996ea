"""Distributed runs on PyTorch's own engine: ``torchrun --nproc_per_node=N -m prunelab run RECIPE``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``init_from_env`` starts the process
group (NCCL on GPUs, gloo on CPU). Every rank trains the same model under DistributedDataParallel on its own
shard of each epoch (the global batch stays the recipe's ``batch_size``); gradients are averaged before the
pruner zeroes the pruned ones, so weights, and therefore every pruning decision (stochastic ones draw from
generators seeded by (seed, event), not from global state), are identical on every rank. ``check_same``
verifies it after every pruning event. Only rank 0 writes files; the others wait at a barrier after each stage.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import PrunelabError


class RankMismatch(PrunelabError):
    """Ranks disagree about the masks: the run cannot continue."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "cpu") -> DistInfo:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return current()


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def barrier() -> None:
    if current().world > 1:
        dist.barrier()


def masks_digest(masks) -> str:
    h = hashlib.sha256()
    for name, m in masks.items():
        h.update(name.encode())
        h.update(m.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_same(masks, where: str) -> list[str]:
    """All ranks' mask digests (identical, or RankMismatch naming ``where``)."""
    mine = masks_digest(masks)
    if current().world <= 1:
        return [mine]
    digests: list = [None] * current().world
    dist.all_gather_object(digests, mine)
    if len(set(digests)) != 1:
        raise RankMismatch(f"ranks hold different masks after {where}; the run stops before they diverge further")
    return digests

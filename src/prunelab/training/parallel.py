"""Fully sharded training (FSDP2, ``torch.distributed.fsdp.fully_shard``): a recipe's ``train.parallel: fsdp``.

Under torchrun every rank holds a 1/world slice (dim 0) of every parameter, gradient and optimizer state, and
gathers a block's full weights only while that block runs; DDP holds all of them on every rank. The model is
sharded in place (its modules and parameter names stay; its parameters become DTensors), one group per block
transformers names in ``_no_split_modules`` (a decoder layer), else per child module, then the root. Masks stay
whole on every rank; :func:`prunelab.masks.local_mask` cuts each to the rows its parameter's shard holds, so the
pruner zeroes pruned weights, gradients and optimizer state on the local shards with no communication.

What leaves a sharded model leaves it whole: :func:`full_state` gathers the weights and the optimizer state in
the layout a single process writes (optimizer state keyed by parameter index), so a checkpoint written by N
ranks resumes in one process or in M ranks, and the reverse.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by FSDP2 (:func:`shard`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as one group each before the root: instances of the classes transformers declares
    unsplittable (``_no_split_modules``: its decoder layers), else the model's children that hold parameters."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    if names:
        found = [m for m in model.modules() if type(m).__name__ in names and m is not model]
        if found:
            return found
    return [c for c in model.children() if next(c.parameters(), None) is not None]


def shard(model: nn.Module, *frozen: nn.Module) -> None:
    """FSDP2-shard ``model`` in place across the ranks of the default process group, and each ``frozen`` model
    (a distillation teacher: gathered block by block for its forward pass only, never holding gradients)."""
    from torch.distributed.fsdp import fully_shard

    for m in (model, *frozen):
        for block in blocks(m):
            fully_shard(block)
        # FSDP2 keeps the root's weights gathered after the forward pass, for the backward that follows; a frozen
        # model has no backward, so its root goes back to shards too (measured, 4 x 512 LLaMA, 2 ranks: the
        # teacher held 40.5 of its 65 MiB per rank, its embeddings and head whole; 32.5 with this)
        fully_shard(m, reshard_after_forward=True if m is not model else None)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """(weights, optimizer state) of a sharded model, whole, on the CPU of rank 0 (empty dicts on the other
    ranks); every rank must call it. The optimizer state is keyed by parameter index in the optimizer's order,
    as ``optimizer.state_dict()`` of an unsharded model is."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    if optimizer is None:
        return weights, None
    return weights, by_index(get_optimizer_state_dict(model, optimizer, options=opts))


def by_index(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter names (torch.distributed.checkpoint's) keyed by index in the
    order of its parameter groups instead (``torch.optim.Optimizer.state_dict``'s); {} stays {}."""
    if not state:
        return {}
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    return {"state": {index[name]: s for name, s in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}

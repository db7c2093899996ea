"""One pass of granularity -> allocation -> selector over independent tensors (the Pruner's pipeline after the
criterion; coupled channels go through :mod:`prunelab.coupling` instead)."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .allocation import LayerGroups
from .criteria import Context
from .targets import Layout


def select_tensors(method, gran, params: Mapping[str, nn.Parameter], layouts: Mapping[str, Layout],
                   scores: dict[str, Tensor], masks: Mapping[str, Tensor], dense: set, sparsity: float,
                   final_sparsity: float, ctx: Context) -> dict[str, Tensor]:
    """The new masks of ``params``: each tensor's scores grouped by ``gran`` (already pruned groups at -inf
    unless the tensor is dense), the method's allocation splitting the budget into keep counts, its selector
    choosing. ``scores`` are consumed (popped and filled in place)."""
    alloc = method.allocation_
    layers, views = [], {}
    for name, p in params.items():
        layout = layouts[name]  # granularities see every weight as (out, in, *kernel)
        shape = layout.canonical_shape(tuple(p.shape))
        with torch.no_grad():
            gs = gran.group_scores(layout.canonical(scores.pop(name)).float())
            alive = gran.alive(layout.canonical(masks[name]))
            if name not in dense:
                gs.masked_fill_(~alive, float("-inf"))  # scores are ours: fill in place, no copy
        views[name] = (gs, alive)
        b, g = gs.shape
        layers.append(LayerGroups(name, shape, b, g, gran.group_size(shape),
                                  gran.per_block, gs if alloc.needs_scores else None))
    keep = alloc.keep_counts(layers, sparsity, final_sparsity)
    new = {}
    for layer in layers:
        gs, alive = views.pop(layer.name)
        layer.scores = None  # free each tensor's scores as soon as it is selected
        sel = method.selector_.select(gs, alive, keep[layer.name], gran.per_block, ctx, layer.name, layer.threshold)
        mask = layouts[layer.name].stored(gran.expand(sel, layer.shape))
        if not method.selector_.revives and layer.name not in dense:
            mask = mask & masks[layer.name]
        new[layer.name] = mask.contiguous()
    return new

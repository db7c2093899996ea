"""One pass of granularity -> allocation -> selector over independent tensors (the Pruner's pipeline after the
criterion; coupled channels go through :mod:`prunelab.structure.coupling` instead)."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .allocation import LayerGroups
from .criteria import Context
from ..errors import ConfigError
from ..targets import Layout


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
    new, selector = {}, method.selector_
    for layer in layers:
        gs, alive = views.pop(layer.name)
        layer.scores = None  # free each tensor's scores as soon as it is selected
        data = _selector_inputs(selector, gran, layer, params[layer.name], layouts[layer.name], ctx)
        sel = selector.select(gs, alive, keep[layer.name], gran.per_block, ctx, layer.name, layer.threshold, data)
        mask = layouts[layer.name].stored(gran.expand(sel, layer.shape))
        if not method.selector_.revives and layer.name not in dense:
            mask = mask & masks[layer.name]
        new[layer.name] = mask.contiguous()
    return new


def _selector_inputs(selector, gran, layer: LayerGroups, param: Tensor, layout: Layout, ctx: Context) -> dict | None:
    """What the selector reads of one target besides its scores (:meth:`Selector.inputs`), grouped by ``gran``
    like the scores, with ``rows``; made one target at a time, so at most one target's copy is held."""
    extra = selector.inputs(layer.name, param, ctx)
    if extra is None:
        return None
    if layer.group_size != 1:
        def name(part):
            return getattr(type(part), "registered_name", type(part).__name__)
        raise ConfigError(f"selector {name(selector)} decides single weights; granularity "
                          f"{name(gran)} groups {layer.group_size} of {layer.name}'s weights: use "
                          "element, row or nm")
    with torch.no_grad():
        data = {k: gran.group_scores(layout.canonical(t)) for k, t in extra.items()}
    data["rows"] = layer.shape[0]
    return data

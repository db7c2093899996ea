"""Check, then trust: every removable channel group is shrunk once on a copy before any selection relies on it.

Torch-Pruning's graph maps channel indices through reshapes, slices and concatenations; on some models the
mapping holds for one channel and not for many (timm's LeViT-128S: a stage's residual stream enters the next
stage's subsampling attention, and removing half of it left a Linear of the wrong width, "mat1 and mat2 shapes
cannot be multiplied", found only by shrink after pruning). So each group is probed as selection uses it: half
of its channels (half its heads where it splits into heads) are masked, with their companions, on a copy of the
model, which :func:`prunelab.structure.surgery` must shrink to the same outputs in float64. All groups go at once;
when that fails the groups are split in two and each half probed again, down to the groups that fail alone,
which are then blocked with the reason. The cost is one shrink of a copy when every group holds (a trace and
two float64 forward passes), about 2 log2(groups) more per group that fails.
"""
from __future__ import annotations

import torch
from torch import nn

from ..inputs import copy_model
from .equivalence import zero_masked
from .surgery import shrink

_REASON = "shrinking it changes the outputs (found by a trial shrink)"


def probe_groups(graph, model: nn.Module, example_inputs) -> int:
    """Block (``ChannelGroup.blockers``) the removable groups of ``graph`` whose trial shrink fails; returns how
    many were blocked."""
    groups = [g for g in graph.groups if g.removable and not g.grouped and g.size >= 2 * (g.head_dim or 1)]
    if not groups:
        return 0
    bad = _failing(graph, model, example_inputs, groups)
    for g in bad:
        g.blockers.append(_REASON)
    return len(bad)


def _failing(graph, model, example_inputs, groups: list) -> list:
    if _holds(graph, model, example_inputs, groups):
        return []
    if len(groups) == 1:
        return groups
    mid = len(groups) // 2
    found = _failing(graph, model, example_inputs, groups[:mid]) + _failing(graph, model, example_inputs, groups[mid:])
    return found or groups  # failing only together: none of them is trusted


def _holds(graph, model: nn.Module, example_inputs, groups: list) -> bool:
    try:
        masks = _half_masks(graph, model, groups)
    except (IndexError, RuntimeError, KeyError, ValueError):  # indices Torch-Pruning mapped beyond a layer (seen
        return False  # on detectors' heads): a group whose channels cannot even be masked is not trusted
    trial = copy_model(model).eval()
    zero_masked(trial, masks, graph.companion_masks(masks))  # pruned rows and their companions at zero, as a channel method holds them
    try:
        shrink(trial, masks, example_inputs)
    except Exception:  # a shape error, outputs that differ, a trace that fails: the groups cannot be trusted
        return False
    return True


def _half_masks(graph, model: nn.Module, groups: list) -> dict:
    """Keep-masks with half of each group's channels (half its heads) removed, over its producers' weights."""
    params = dict(model.named_parameters())
    masks = {}
    for g in groups:
        first = next(iter(g.producers.values()))
        if g.head_dim:  # whole heads, by the first producer's rows
            head = first // g.head_dim
            chans = (head < head.unique().numel() // 2).nonzero().flatten()
        else:
            chans = torch.arange(g.size // 2)
        for layer, idx in g.producers.items():
            name = f"{layer}.weight"
            keep = masks.get(name)
            if keep is None:
                keep = masks[name] = torch.ones(params[name].shape, dtype=torch.bool, device=params[name].device)
            rows = idx[chans].to(keep.device)
            if layer in graph.transposed:
                keep[:, rows] = False
            else:
                keep[rows] = False
    return masks

"""The selection loop: build the candidate sets, ask the allocation for keep-counts once, ask the selector which
survive in each set. Every pass goes through :func:`choose`: tensors (:func:`select_tensors`), coupled channels,
attention heads and recurrent units (:mod:`prunelab.structure.coupling`), transformer units
(:mod:`prunelab.structure.units`), and a calibrated method's per-layer budgets (:func:`budget`).

A caller turns its own structure into :class:`Candidates` (scores and alive flags of the groups the allocation
counts) and writes the kept sets back its own way; the loop owns the order of the questions and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .allocation import Allocation, LayerGroups
from .criteria import Context
from .selection import Selector
from ..targets import Layout


@dataclass(frozen=True)
class Selection:
    """How one pass chooses: the ``allocation`` that budgets, the ``selector`` that picks, the ``sparsity`` of this
    event and the schedule's ``final_sparsity``, and the event's ``ctx``."""

    allocation: Allocation
    selector: Selector
    sparsity: float
    final_sparsity: float
    ctx: Context


@dataclass
class Candidates:
    """One set the allocation budgets and the selector chooses from.

    ``layer``: what the allocation sees (name, shape, blocks x groups, group size, members named rules match).
    ``scores`` / ``alive``: (B, G) group scores (-inf where dead; scratch the selector may overwrite) and alive
    flags. ``split``: (rows, per_row) when the set must lose the same number in every row (a grouped
    convolution's conv groups, a recurrent module's layers and directions): the keep-count is rounded to a
    multiple of ``rows`` and chosen per row, the groups taken in ``order`` first when given (the kept flags then
    come back in that order). ``inputs``: made when the set is chosen, what the selector reads
    besides the scores (:meth:`~prunelab.engine.selection.Selector.inputs`), so one set's copy is held at a time.
    ``multiple``: the keep-count is rounded down to a multiple of it (a width a runtime or a config needs),
    never below one multiple (or what is alive, when less); ``allowed``: the keep-counts a config can hold (heads
    whose count divides the hidden size), the count then rounded down to one of them.
    """

    layer: LayerGroups
    scores: Tensor
    alive: Tensor
    split: tuple[int, int] | None = None
    order: Tensor | None = None
    inputs: Callable[[], dict | None] | None = None
    multiple: int = 1
    allowed: tuple[int, ...] | None = None


def budget(layers: list[LayerGroups], how: Selection) -> dict[str, int]:
    """The allocation's keep-count of every set (the one place the engine asks it)."""
    return how.allocation.keep_counts(layers, how.sparsity, how.final_sparsity)


def rounded_keep(k: int, multiple: int, alive: int, allowed: tuple[int, ...] | None = None) -> int:
    """``k`` rounded down to a multiple of ``multiple``, at least one multiple, at most ``alive``: the count
    kept never grows past the allocation's unless one multiple is more than it kept (as Torch-Pruning's
    ``round_to``, which keeps the pruned share at or above the target); then down to the largest of ``allowed``
    not above it (the smallest when none is)."""
    k = min(alive, max(multiple, k - k % multiple))
    if allowed:
        fits = [a for a in allowed if a <= k]
        k = max(fits) if fits else min(allowed)
    return k


def choose(sets: list[Candidates], how: Selection) -> Iterator[tuple[Candidates, Tensor]]:
    """(set, its kept (B, G) groups) for every set in order: one budget over all of them, then the selector per
    set. Each set's scores are released from its ``layer`` as it is chosen."""
    needs = how.allocation.needs_scores
    for c in sets:
        c.layer.scores = c.scores if needs else None
    keep = budget([c.layer for c in sets], how)
    for c in sets:
        layer = c.layer
        layer.scores = None  # free each set's scores as soon as it is selected
        k, scores, alive, per_block, hint = keep[layer.name], c.scores, c.alive, layer.per_block, layer.threshold
        if c.split is not None:  # the same count in every row
            rows, per = c.split
            k = max(0, min(per, round(k / rows))) * rows
            if c.order is not None:
                scores, alive = scores[..., c.order], alive[..., c.order]
            scores, alive, per_block, hint = scores.reshape(rows, per), alive.reshape(rows, per), True, None
        if c.multiple > 1 or c.allowed:
            k = rounded_keep(k, c.multiple, int(alive.sum()), c.allowed)
        data = c.inputs() if c.inputs is not None else None
        yield c, how.selector.select(scores, alive, k, per_block, how.ctx, layer.name, hint, data)


def select_tensors(gran, params: Mapping[str, nn.Parameter], layouts: Mapping[str, Layout],
                   scores: dict[str, Tensor], masks: Mapping[str, Tensor], dense: set, how: Selection
                   ) -> dict[str, Tensor]:
    """The new masks of independent tensors ``params``: each tensor's scores grouped by ``gran`` (already pruned
    groups at -inf unless the tensor is dense), one budget, the selector per tensor. ``scores`` are consumed
    (popped and filled in place)."""
    sets = []
    for name, p in params.items():
        layout = layouts[name]  # granularities see every weight as (out, in, *kernel)
        shape = layout.canonical_shape(tuple(p.shape))
        with torch.no_grad():
            gs = gran.group_scores(layout.canonical(scores.pop(name)).float())
            alive = gran.alive(layout.canonical(masks[name]))
            if name not in dense:
                gs.masked_fill_(~alive, float("-inf"))  # scores are ours: fill in place, no copy
        b, g = gs.shape
        layer = LayerGroups(name, shape, b, g, gran.group_size(shape), gran.per_block)
        sets.append(Candidates(layer, gs, alive, inputs=_inputs_of(how.selector, gran, layer, p, layout, how.ctx)))
    new, revives = {}, how.selector.revives
    for c, sel in choose(sets, how):
        name = c.layer.name
        mask = layouts[name].stored(gran.expand(sel, c.layer.shape))
        if not revives and name not in dense:
            mask = mask & masks[name]
        new[name] = mask.contiguous()
    return new


def _inputs_of(selector: Selector, gran, layer: LayerGroups, param: Tensor, layout: Layout, ctx: Context):
    """A callable making what the selector reads of one target besides its scores (:meth:`Selector.inputs`),
    grouped by ``gran`` like the scores, with ``rows``; None for a selector that reads nothing more."""
    def make() -> dict | None:
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
    return make

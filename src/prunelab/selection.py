"""Selectors: which groups survive, given their scores, which are alive, and how many to keep.

``select(scores, alive, keep, per_block, ctx)`` gets (B, G) group scores and alive flags and returns a (B, G)
bool tensor with exactly ``keep`` True entries in total (``keep // B`` in every block when ``per_block``),
unless fewer groups are alive: a deterministic selector never revives a pruned group, so masks nest.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .criteria import Context
from .registry import Registry
from .topk import all_true, topk_mask


class Selector:
    """Base class for selectors. ``revives`` is True for selectors that may bring pruned weights back."""

    revives = False

    def select(self, scores: Tensor, alive: Tensor, keep: int, per_block: bool, ctx: Context,
               name: str = "", hint: float | None = None) -> Tensor:
        """Return the (B, G) kept groups. ``scores`` is scratch the selector may overwrite; ``hint`` is a
        score threshold the allocation found, which a selector may use after checking it."""
        raise NotImplementedError


SELECTORS: Registry[Selector] = Registry("selector", Selector)


@SELECTORS.register("topk")
@dataclass
class TopK(Selector):
    """Keep the highest-scoring alive groups; pruned groups stay pruned (masks nest across rounds)."""

    def select(self, scores, alive, keep, per_block, ctx, name="", hint=None):
        all_alive = all_true(alive)
        if not all_alive:  # in place: the scores are the caller's scratch (see Selector.select)
            scores.masked_fill_(~alive, float("-inf"))
        if per_block:
            b, g = scores.shape
            k = keep // b
            if k >= g:
                return alive.clone()
            if k <= 0:
                return torch.zeros_like(alive)
            # stable sort: ties broken by position inside the block
            idx = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
            out = torch.zeros_like(alive)
            out.scatter_(1, idx, True)
            return out & alive
        kept = topk_mask(scores, keep, hint)
        return kept if all_alive else kept & alive

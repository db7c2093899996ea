"""Selectors: which groups survive, given their scores, which are alive, and how many to keep.

``select(scores, alive, keep, per_block, ctx)`` gets (B, G) group scores and alive flags and returns a (B, G)
bool tensor with exactly ``keep`` True entries in total (``keep // B`` in every block when ``per_block``),
unless fewer groups are alive: a deterministic selector never revives a pruned group, so masks nest.
A selector that reads more than the scores (DSnoT: each weight's expected output and its input's variance)
declares it: :meth:`Selector.needs` (calibration statistics) and :meth:`Selector.inputs` (per-weight tensors the
pipeline groups like the scores and hands to ``select`` as ``data``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .criteria import Context, Needs
from ..registry import Registry, check_count
from .topk import all_true, topk_mask


class Selector:
    """Base class for selectors. ``revives`` is True for selectors that may bring pruned weights back."""

    revives = False

    def select(self, scores: Tensor, alive: Tensor, keep: int, per_block: bool, ctx: Context,
               name: str = "", hint: float | None = None, data: dict | None = None) -> Tensor:
        """Return the (B, G) kept groups. ``scores`` is scratch the selector may overwrite; ``hint`` is a
        score threshold the allocation found, which a selector may use after checking it; ``data`` is what
        :meth:`inputs` gave for this target, each tensor grouped like the scores, with ``rows``, the target's
        output rows (None for a selector without inputs, and where groups are not single weights)."""
        raise NotImplementedError

    def needs(self) -> Needs:
        """What the selector needs handed over before each event besides the criterion's (default: nothing)."""
        return Needs()

    def inputs(self, name: str, param: Tensor, ctx: Context) -> dict[str, Tensor] | None:
        """Tensors of ``param``'s shape (its stored layout, as scores are) that ``select`` reads besides the scores,
        for the target ``name``; None (the default): none. Only single-weight granularities can group them."""
        return None


SELECTORS: Registry[Selector] = Registry("selector", Selector)


@SELECTORS.register("topk")
@dataclass
class TopK(Selector):
    """Keep the highest-scoring alive groups; pruned groups stay pruned (masks nest across rounds)."""

    def select(self, scores, alive, keep, per_block, ctx, name="", hint=None, data=None):
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


def anneal_factor(event: int, total_events: int, anneal_rounds: int) -> float:
    """The factor on p_in at ``event`` (0-based) of ``total_events``: 1, then falling linearly over the last
    ``anneal_rounds`` stochastic events to 0 at the last of them (the final event is the clean-up)."""
    if not anneal_rounds:
        return 1.0
    left = (total_events - 2) - event  # stochastic events after this one
    return max(0.0, min(1.0, left / anneal_rounds))


def expected_density(rate: float, density: float, total_events: int, anneal_rounds: int = 0) -> float:
    """Expected density before the final event, from a dense start, when every stochastic event drops a
    fraction ``rate`` (= q p_out) of the alive weights and revives pruned ones with the p_in derived for the
    target ``density`` (times :func:`anneal_factor`)."""
    d, c = 1.0, density / (1.0 - density)
    for event in range(total_events - 1):
        p_in = min(1.0, rate * c) * anneal_factor(event, total_events, anneal_rounds)
        d = d * (1.0 - rate) + (1.0 - d) * p_in
    return d


def drop_rate(density: float, total_events: int, anneal_rounds: int = 0, margin: float = 1.25) -> float:
    """The rate a = q p_out whose expected density before the final event is ``margin`` x ``density``
    (bisection on :func:`expected_density`; 1 when even a = 1 stays above it)."""
    goal = min(1.0, margin * density)
    if expected_density(1.0, density, total_events, anneal_rounds) >= goal:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_density(mid, density, total_events, anneal_rounds) > goal:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@SELECTORS.register("drop")
@dataclass
class Drop(Selector):
    """Stochastic drop-out / drop-in (DropPruning, Jia et al. 2018): a birth-death process on the mask.

    Candidates are the alive groups with the lowest ``q`` fraction of scores (``candidates="lowest"``; or,
    Han-style, those scoring below ``lam`` times the root-mean-square of the alive scores, which for
    magnitude scores is ``lam * std(w)`` of zero-mean weights: ``candidates="std"``). Each candidate is
    dropped with probability ``p_out``; each pruned group is revived with probability ``p_in``.

    ``p_in=None`` derives it from the final density d* by the fixed point of
    d' = d (1 - q p_out) + (1 - d) p_in, i.e. ``p_in = q p_out d* / (1 - d*)``. With ``anneal_rounds=k`` p_in
    falls linearly over the last k events before the final one, reaching 0 at the last of them so the mask
    settles. ``q=None`` (needs the planned number of events T) picks the rate a = q p_out so that the expected
    density before the final clean-up, run through this recursion from a dense start with the actual p_in
    schedule (annealing included), is 1.25 d* (:func:`drop_rate`); ``q = min(1, a / p_out)``. Annealing
    matters here: while p_in falls to 0 the density keeps shrinking by (1 - a) per event, and a rate chosen
    without it undershoots the target, leaving the clean-up to revive weights at random.

    At the final event (``ctx.final``) the mask is cleaned up deterministically to exactly the allocated
    count: the top-scoring alive groups, plus random pruned ones if too few are alive. Random draws come
    from (seed, event, tensor name), so the same seed gives the same masks on any process and after a
    resume. ``ctx.candidate_threshold``, when given (DropPruning's global scope), replaces the per-tensor
    quantile.
    """

    q: float | None = 0.2
    p_out: float = 0.5
    p_in: float | None = None
    candidates: str = "lowest"
    lam: float = 1.0
    anneal_rounds: int = 0
    revives = True

    def __post_init__(self):
        from ..errors import ConfigError
        from ..registry import check_fraction

        if self.q is not None and not (isinstance(self.q, (int, float)) and 0 < self.q <= 1):
            raise ConfigError(f"drop q must be in (0, 1] (or null to derive it), got {self.q!r}")
        check_fraction("drop p_out", self.p_out, allow_one=True)
        if self.p_in is not None:
            check_fraction("drop p_in", self.p_in, allow_one=True)
        if self.candidates not in ("lowest", "std"):
            raise ConfigError(f"drop candidates must be 'lowest' or 'std', got {self.candidates!r}")
        if not (isinstance(self.lam, (int, float)) and self.lam > 0):
            raise ConfigError(f"drop lam must be positive, got {self.lam!r}")
        check_count("drop anneal_rounds", self.anneal_rounds, low=0)

    def q_at(self, ctx: Context) -> float:
        """The candidate fraction at this event (``q``, or derived when ``q`` is None)."""
        if self.q is not None:
            return float(self.q)
        if not ctx.total_events or ctx.total_events < 2 or self.p_out == 0:
            from ..errors import ConfigError
            raise ConfigError("drop q=null needs a positive p_out and a known number of pruning rounds (at least 2)")
        d = 1.0 - ctx.final_sparsity
        if d >= 1.0:
            return 0.0
        return min(1.0, drop_rate(d, ctx.total_events, self.anneal_rounds) / self.p_out)

    def p_in_at(self, ctx: Context) -> float:
        """The revival probability at this event (derived and annealed as documented above)."""
        if self.p_in is not None:
            p = self.p_in
        else:
            d = 1.0 - ctx.final_sparsity
            p = 1.0 if d >= 1.0 else min(1.0, self.q_at(ctx) * self.p_out * d / (1.0 - d))
        if ctx.total_events is not None:
            p *= anneal_factor(ctx.event, ctx.total_events, self.anneal_rounds)
        return p

    def select(self, scores, alive, keep, per_block, ctx, name="", hint=None, data=None):
        if per_block:
            from ..errors import ConfigError
            raise ConfigError("the drop selector does not support per-block granularities (N:M, window)")
        gen = ctx.generator("drop", name)
        n_alive = int(torch.count_nonzero(alive))
        if ctx.final:
            kept = TopK().select(scores, alive, keep, per_block, ctx, name, hint)
            short = keep - int(torch.count_nonzero(kept))
            if short > 0:  # fewer alive than the target: revive at random (their weights are all zero)
                order = torch.rand(alive.shape, generator=gen).masked_fill_(alive, -1.0)
                kept |= topk_mask(order, short)
            return kept
        if self.candidates == "std":
            rms = scores[alive].float().pow(2).mean().sqrt() if n_alive else torch.tensor(0.0)
            cand = alive & (scores < self.lam * rms)
        elif ctx.candidate_threshold is not None:
            cand = alive & (scores < ctx.candidate_threshold)
        else:
            n_cand = int(self.q_at(ctx) * n_alive + 0.5)
            cand = alive & ~topk_mask(scores, n_alive - n_cand)
        u = torch.rand(alive.shape, generator=gen)
        dropped = cand & (u < self.p_out)
        revived = ~alive & (u < self.p_in_at(ctx))  # disjoint from the candidates, so one draw serves both
        return (alive & ~dropped) | revived


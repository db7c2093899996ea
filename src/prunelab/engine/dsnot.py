"""DSnoT: a selector that refines a mask without training, by swapping pruned and kept weights row by row.

Zhang, Zhao, Lin, Ji, Ji, "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs" (DSnoT, ICLR
2024). After the criterion's top-k mask, each output row i has an expected reconstruction error

    e_i = sum_{j pruned} W_ij E[x_j]   (the dense output's mean minus the sparse one's, per token)

and DSnoT swaps weights to drive it to zero: it regrows the pruned weight with the largest W_ij E[x_j] /
Var[x_j]^power of the sign of e_i (largest when e_i > 0, smallest when e_i < 0: low-variance inputs first) and
prunes a kept one in its place. Unstructured (one comparison group per row: granularity ``row``, or ``element``,
whose rows keep their counts), the pruned weight is the kept weight of the lowest score whose W_ij E[x_j] has
the opposite sign of e_i (kept weights ordered as the authors' ``return_reorder_indice``: those of negative
contribution by rising score, then the positive ones by falling score, one pointer from each end). Under N:M
(several blocks per row) it is the lowest-scoring weight of the regrown weight's block that the criterion kept,
so every block keeps its count. At most ``cycles`` swaps per row; a row stops once |e_i| <= ``threshold``.
Targets whose names match a glob of ``skip`` keep the criterion's mask (the authors skip a LLaMA's MLP
layers by default, ``--skip_layer mlp``: ``skip: ["*.mlp.*"]``).

Written from the paper and the authors' ``prune_DSnoT`` (github.com/zyxxmu/DSnoT, ``lib/prune.py``), whose
defaults these are (max_cycle_time 50, pow_of_var_regrowing 1). Deviations, each for a reason:

- a swap is made only when it lowers |e_i|; otherwise the row skips that regrowth candidate (the authors'
  default, ``without_same_sign``, swaps while |e_i| exceeds the threshold even when the swap overshoots and
  raises |e_i|): so DSnoT never increases the error it minimises;
- E[x_j] and Var[x_j] are per token (the authors' statistics are per 2048-token sequence, so their
  ``update_threshold`` 0.1 is 5e-5 per token); the default threshold is 0, stopping only when no swap helps
  or the cycles are spent; the variance is the exact population variance of all calibration tokens (the
  authors merge batches' variances without the between-batch term);
- weights pruned by earlier events stay pruned (regrowth draws only on weights alive before this event), so
  masks nest as with every deterministic selector.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..calibration.observers import column_view, per_row
from ..calibration.request import Calibration
from .criteria import Needs
from ..errors import ConfigError
from .selection import SELECTORS, Selector, TopK
from ..targets import Layout


@SELECTORS.register("dsnot")
@dataclass
class DSnoT(Selector):
    """The criterion's top-k, then at most ``cycles`` error-reducing swaps per output row (module docstring).

    ``cycles``: the authors' 50 are made for rows of 4096 and more weights; in narrow layers they replace much
    of what the criterion kept (LeNet-5 at 80 %, before retraining: 1 swap 0.9545, 10 0.8184, 50 0.2057, Wanda
    alone 0.9245), so take fewer there.

    ``samples``: calibration inputs when the criterion asks for none (magnitude); with a calibrated criterion
    (Wanda) its count holds and the means are measured in its pass. Memory: four float64 tensors of a target's
    size while it is refined (its expected outputs, variances, orders).
    """

    cycles: int = 50
    power: float = 1.0
    threshold: float = 0.0
    samples: int = 128
    skip: list = field(default_factory=list)

    def __post_init__(self) -> None:
        for label, v, low in (("cycles", self.cycles, 0), ("samples", self.samples, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"dsnot {label} must be an integer >= {low}, got {v!r}")
        for label, v in (("power", self.power), ("threshold", self.threshold)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"dsnot {label} must be a number >= 0, got {v!r}")
        if isinstance(self.skip, str):
            self.skip = [self.skip]
        if not isinstance(self.skip, (list, tuple)) or not all(isinstance(g, str) and g for g in self.skip):
            raise ConfigError(f"dsnot skip is a list of target-name globs, got {self.skip!r}")

    def needs(self) -> Needs:
        return Needs(calibration=Calibration(self.samples, (frozenset({"norms", "sums"}),)))

    def inputs(self, name, param, ctx):
        stats = (ctx.input_stats or {}).get(name)
        if stats is None or stats.sum is None:
            raise ConfigError(f"the dsnot selector needs the calibration inputs' means and variances of {name}: "
                              "call pruner.calibrate(batches) before pruning")
        layout = (ctx.layouts or {}).get(name) or Layout()
        w = column_view(layout, param.detach()).double()
        mean, var = (per_row(t.to(w.device), w.shape[0]) for t in (stats.mean(), stats.variance()))
        shape = layout.canonical(param).shape
        return {"effect": layout.stored((w * mean).reshape(shape)),
                "var": layout.stored(var.expand_as(w).reshape(shape))}

    def select(self, scores, alive, keep, per_block, ctx, name="", hint=None, data=None):
        if data is None:
            raise ConfigError("the dsnot selector swaps single weights within rows: use it with granularity element, "
                              "row or nm, not on channels or other groups")
        kept = TopK().select(scores, alive, keep, per_block, ctx, name, hint)
        if any(fnmatch.fnmatchcase(name, g) for g in self.skip):
            return kept
        b, g = scores.shape
        rows = data["rows"]
        cols = b * g // rows
        if per_block and b % rows or not per_block and b != 1:
            raise ConfigError(f"dsnot cannot place {name}'s comparison blocks within its rows")
        block = g if per_block and b > rows else cols  # several blocks per row (N:M): swaps stay in one
        out = refine(kept.reshape(rows, cols), alive.reshape(rows, cols), scores.reshape(rows, cols),
                     data["effect"].reshape(rows, cols), data["var"].reshape(rows, cols), block,
                     self.cycles, self.power, self.threshold)
        return out.reshape(b, g)


def row_error(kept: Tensor, effect: Tensor) -> Tensor:
    """e_i = sum over the pruned weights of row i of W_ij E[x_j]: the mean of the output that pruning removes."""
    return effect.masked_fill(kept, 0.0).sum(1)


def refine(kept: Tensor, alive: Tensor, scores: Tensor, effect: Tensor, var: Tensor, block: int, cycles: int,
           power: float, threshold: float) -> Tensor:
    """DSnoT's swaps on (rows, columns) tensors: ``kept`` the criterion's mask, ``alive`` what may be regrown
    (with ``~kept``), ``scores`` the criterion's, ``effect`` W_ij E[x_j], ``var`` Var[x_j]; ``block`` the
    columns of one comparison block (the whole row: unstructured). Returns the new mask, with every block's
    count unchanged and every row's |e_i| no larger."""
    rows, cols = kept.shape
    kept = kept.clone()
    e = row_error(kept, effect)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=kept.device)
    key = torch.where(alive & ~kept, effect / var.clamp_min(torch.finfo(torch.float64).tiny) ** power, inf)
    grow_order = key.argsort(dim=1, stable=True)  # regrowth candidates by rising key, the rest after them
    lo = torch.zeros(rows, dtype=torch.long, device=kept.device)
    hi = (alive & ~kept).sum(1) - 1  # last candidate
    whole = block == cols
    if whole:  # kept weights: negative contributions by rising score, then positive ones by falling score
        rank = scores.masked_fill(~kept, float("inf")).argsort(dim=1, stable=True).argsort(1).double()
        order_key = torch.where(effect < 0, rank, 2 * cols - rank).masked_fill(~kept, 3 * cols)
        prune_order = order_key.argsort(dim=1, stable=True)
        p_lo, p_hi = torch.zeros_like(lo), kept.sum(1) - 1
    else:
        original = kept.clone()  # under N:M only weights the criterion kept are pruned, lowest score first
        by_block = scores.reshape(rows, cols // block, block)
    active = e.abs() > threshold
    r_idx = torch.arange(rows, device=kept.device)
    for _ in range(cycles):
        active &= lo <= hi
        if whole:
            active &= p_lo <= p_hi
        if not bool(active.any()):
            break
        up = e > 0  # regrow from the top of the order (positive contributions) when the error is positive
        grow = grow_order[r_idx, torch.where(up, hi, lo).clamp(0, cols - 1)]
        if whole:
            cut = prune_order[r_idx, torch.where(up, p_lo, p_hi).clamp(0, cols - 1)]
            valid = torch.ones_like(active)
        else:
            start = grow - grow % block
            blk = by_block[r_idx, grow // block].masked_fill(~(original & kept).reshape(rows, -1, block)[
                r_idx, grow // block], float("inf"))
            low, at = blk.min(1)
            cut, valid = start + at, torch.isfinite(low)
        after = e + effect[r_idx, cut] - effect[r_idx, grow]
        swap = active & valid & (after.abs() < e.abs())
        where = swap.nonzero().squeeze(1)
        kept[where, grow[where]] = True
        kept[where, cut[where]] = False
        e = torch.where(swap, after, e)
        # every row moves past its regrowth candidate (used, or skipped because it would overshoot); a row's
        # pruning pointer moves only when that weight went
        lo, hi = lo + (active & ~up).long(), hi - (active & up).long()
        if whole:
            p_lo, p_hi = p_lo + (swap & up).long(), p_hi - (swap & ~up).long()
        active &= e.abs() > threshold
    return kept

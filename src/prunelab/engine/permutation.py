"""Channel permutations for N:M: reorder a layer's input channels so that its N:M blocks keep more score.

N:M keeps n of every m consecutive input channels, so which channels share a block decides what can be kept.
RIA (Zhang et al., "Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models", ICLR
2024) reorders them before choosing: *channel reallocation* sorts the channels by their summed score and deals
them out so that block position k takes the k-th quantile (ascending for odd k, descending for even k, as the
authors' ``index[ii-1::m]``), and a *linear sum assignment* (their ``--lsa``) then moves, for each position in
turn, the channels at that position between blocks to maximise the kept score (scipy's
``linear_sum_assignment`` over a window of ``window`` blocks at a time, their ``--fast`` splitting). Written
from the paper and the authors' ``prune_ria``. Two deviations: the dealt-out order is kept only when it keeps
at least the identity's score (the authors keep it always; the assignment can then only add), and the
permutation is made real instead of left to the runtime: the authors zero the weights in the original order,
so their masks are N:M only after a permutation the deployed model must apply to its inputs; here the channels
are moved in the model itself, which computes the same function, and the stored masks are N:M as they stand.

This module is the search alone; which layers a permutation can be made real in, and the decision that moves
them, are a method's (:mod:`prunelab.methods.permuted`).
"""
from __future__ import annotations

import torch
from torch import Tensor


MODES = ("none", "heuristic", "lsa")


def kept_score(scores: Tensor, n: int, m: int) -> Tensor:
    """The total of the n largest scores in every block of m consecutive columns of ``scores`` (rows, cols)."""
    r, c = scores.shape
    return scores.reshape(r, c // m, m).topk(n, dim=2).values.sum()


def reallocation(scores: Tensor, m: int) -> Tensor:
    """RIA's channel reallocation: column order whose block position k holds the k-th quantile of the columns'
    summed scores (ascending at odd k, descending at even k, counting from 1)."""
    c = scores.shape[1]
    order = scores.sum(0).argsort(stable=True)
    index = torch.empty_like(order)
    for k in range(m):
        part = order[c * k // m: c * (k + 1) // m]
        index[k::m] = part if k % 2 == 0 else part.flip(0)
    return index


def assignment(scores: Tensor, index: Tensor, n: int, m: int, window: int = 256) -> Tensor:
    """``index`` improved by linear sum assignment: for each block position p, the channels at p are reassigned
    among the blocks of each window to maximise the kept score; never lower than ``index``'s."""
    from scipy.optimize import linear_sum_assignment

    r, c = scores.shape
    index = index.clone()
    blocks = c // m
    for p in range(m):
        for start in range(0, blocks, window):
            nb = min(window, blocks - start)
            cols = index[start * m:(start + nb) * m]
            blk = scores[:, cols].reshape(r, nb, m).permute(1, 0, 2)  # (nb, rows, m)
            cand = blk[:, :, p]                                        # (nb, rows): each block's channel at p
            value = torch.empty(nb, nb, dtype=torch.float64)
            for j in range(nb):  # value[i, j]: block j's kept score with block i's channel at p
                trial = blk[j].unsqueeze(0).repeat(nb, 1, 1)
                trial[:, :, p] = cand
                value[:, j] = trial.topk(n, dim=2).values.sum((1, 2)).double().cpu()
            src, dst = linear_sum_assignment(value.numpy(), maximize=True)
            moved = cols.clone()
            moved[torch.as_tensor(dst) * m + p] = cols[torch.as_tensor(src) * m + p]
            index[start * m:(start + nb) * m] = moved
    return index


def search(scores: Tensor, n: int, m: int, mode: str = "lsa", window: int = 256) -> Tensor:
    """The column order for N:M of ``scores`` (rows, cols): ``heuristic`` RIA's reallocation, ``lsa`` with the
    assignment after it; the identity when neither keeps more."""
    s = scores.double()
    ident = torch.arange(s.shape[1], device=s.device)
    index = reallocation(s, m)
    if kept_score(s[:, index], n, m) < kept_score(s, n, m):
        index = ident
    if mode == "lsa":
        index = assignment(s, index, n, m, window)
    return index

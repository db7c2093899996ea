"""Reconstruction: what the surviving weights of a layer become so that its outputs on calibration data change
as little as possible (SparseGPT's blocked optimal-brain-surgeon update).

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (ICML 2023),
Algorithm 1, written here from the paper (torch has no such routine; the authors' code is a research script):
for a weight W (rows x columns) whose inputs X have Gram matrix H = X^T X (dampened by ``percdamp`` times its
mean diagonal), columns are processed left to right in blocks of ``blocksize``; within a block the weights to
prune are those with the smallest w^2 / [H^-1]_jj^2 (unstructured: a fraction ``sparsity`` of each block,
chosen over all rows, or with ``per_row`` the same count in every row; N:M: n of every m consecutive columns
of each row), and each pruned or kept column's
error is spread over the columns to its right through the upper Cholesky factor of H^-1, lazily per block.
With ``keep`` given, the mask is fixed and only the update runs. The solve runs in the Gram matrix's precision
(float32 unless the caller accumulated it in float64; float64 weights always in float64), as the authors' code
runs in float32.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError


def sparsegpt(weight: Tensor, gram: Tensor, sparsity: float = 0.5, n: int = 0, m: int = 0,
              keep: Tensor | None = None, blocksize: int = 128, percdamp: float = 0.01,
              per_row: bool = False, joint: bool = True, consume: bool = False) -> tuple[Tensor, Tensor, bool]:
    """(updated weight, keep mask, whether H was invertible) of one layer, weight and mask (rows, columns), the
    weight's dtype out; or of G independent ones at once, weight (G, rows, columns) and Gram matrices (G,
    columns, columns) (a grouped convolution's groups: one pass of the column loop for all of them, since a
    depthwise layer's hundreds of 1-row problems took a millisecond each one at a time). Columns no calibration
    input ever reached (zero diagonal of H: pruning them costs nothing on the calibration data) are pruned
    first, within the budget; past it they are kept unchanged. The paper's implementation drops them all: on
    torchvision's DeepLabV3-MobileNetV3 calibrated on two 64 px images, whose dilated taps read only padding,
    that pruned 0.736 of the targets at sparsity 0.5, weights the taps use at full size. When H is not
    positive definite even after dampening, H^-1 is taken as the identity (as llm-compressor falls back): the weights are pruned by
    magnitude with no update, and the flag (False if any group fell back) says so. Unstructured, a grouped
    layer's count is rounded once and chosen across its groups (each block's lowest scores over all of them, as
    over all rows of a plain layer); a group that fell back then competes with w^2 for its score. ``joint=False``:
    each group at ``sparsity`` on its own (the experts of a mixture, each a layer of its own as its authors'
    per-Linear SparseGPT treats it). ``consume=True``: the Gram matrix is dampened and factored in place (the
    caller's copy is spent: one (n, n) matrix less at the peak, 127 MiB for a 5632-wide down projection)."""
    batched = weight.dim() == 3
    w3, h3 = (weight, gram) if batched else (weight[None], gram[None])
    if w3.dim() != 3 or h3.shape != (w3.shape[0], w3.shape[2], w3.shape[2]):
        raise ConfigError(f"sparsegpt needs a (rows, columns) weight and a (columns, columns) Gram matrix (or G of "
                          f"each), got {tuple(weight.shape)} and {tuple(gram.shape)}")
    dtype = torch.float64 if torch.float64 in (gram.dtype, weight.dtype) else torch.float32
    w = w3.detach().to(dtype).clone(memory_format=torch.contiguous_format)  # a transposed view (HF Conv1D)
    # would otherwise stay column-major, and every block's masks with it
    h = h3.detach().to(device=w.device, dtype=dtype)
    if h.data_ptr() == h3.data_ptr() and not consume:  # the caller's own Gram: kept unless it gave it up
        h = h.clone()
    h = h.contiguous()
    groups, rows, cols = w.shape
    diag = h.diagonal(dim1=-2, dim2=-1)
    dead = diag == 0  # (G, columns)
    diag.masked_fill_(dead, 1)
    if keep is not None:
        keep = (keep if batched else keep[None]).to(w.device)
    diag.add_(percdamp * diag.mean(-1, keepdim=True))
    hinv, ok = _upper_inverse_factor(h)
    del h, diag
    pruned = torch.zeros_like(w, dtype=torch.bool) if keep is None else ~keep
    # entries pruned so far per group (per row with per_row): a block's count is its cumulative share minus these
    done = torch.zeros(groups, dtype=torch.long, device=w.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, h1 = w[..., i1:i2].clone(), hinv[:, i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        d1 = h1.diagonal(dim1=-2, dim2=-1)  # (G, block)
        if keep is None and not n:
            score = w1.square() / d1.square()[:, None]
            # dead columns are pruned first and count towards the budget, so a block holding more of them than its
            # share makes the later blocks prune fewer; past the layer's budget they are kept (see the docstring)
            dead_b = dead[:, i1:i2]
            score.masked_fill_(dead_b[:, None], -math.inf)
            # the layer's count, rounded once (nearest, halves up) and shared out over the blocks by cumulative
            # rounding, so the whole layer meets the engine's rounding rule rather than a floor per block
            per = 1 if per_row else rows
            if groups > 1 and not per_row and joint:
                # a grouped convolution is one layer: its count is rounded once over all groups and each block's
                # lowest scores (the same unit, the output error a weight's removal adds) chosen across them.
                # Rounded per group, a depthwise 1x1 layer's one-weight groups each pruned round(0.5) = 1: all
                total = groups * rows * cols
                k = max(_share(sparsity, total, 0, groups * rows * i2) - int(done[0]), 0)
                k = min(max(k, rows * int(dead_b.sum())), _share(sparsity, total, 0, total) - int(done[0]))
                pruned[..., i1:i2] = _lowest(score.reshape(1, 1, -1), torch.tensor([k])).reshape(score.shape)
                done[0] += k
            else:
                k = torch.clamp(_share(sparsity, cols * per, 0, i2 * per) - done, min=0)
                k = torch.minimum(torch.maximum(k, per * dead_b.sum(1)), _share(sparsity, cols * per, 0, cols * per) - done)
                pruned[..., i1:i2] = _lowest(score if per_row else score.flatten(1)[:, None], k).reshape(score.shape)
                done += k
        p1 = pruned[..., i1:i2]  # a view: N:M's choices below write through it
        for i in range(i2 - i1):
            col = w1[..., i]
            if keep is None and n and i % m == 0:
                block = w1[..., i:i + m].square() / d1[:, None, i:i + m].square()
                block.masked_fill_(dead[:, None, i1 + i:i1 + i + m], -math.inf)
                idx = block.argsort(dim=-1, stable=True)[..., :n]  # ties (dead columns) by position
                p1[..., i:i + m] = False
                p1[..., i:i + m].scatter_(-1, idx, True)
            q = col.masked_fill(p1[..., i], 0)
            q1[..., i] = q
            e = (col - q) / h1[:, i:i + 1, i]
            w1[..., i:] -= e[..., None] * h1[:, i:i + 1, i:]
            err1[..., i] = e
        w[..., i1:i2] = q1
        w[..., i2:] -= err1 @ hinv[:, i1:i2, i2:]
    w, keep_out = w.to(weight.dtype), ~pruned
    return (w, keep_out, ok) if batched else (w[0], keep_out[0], ok)


def _upper_inverse_factor(h: Tensor) -> tuple[Tensor, bool]:
    """(G, n, n) upper Cholesky factors of the inverses of the (G, n, n) matrices ``h`` (consumed), the identity
    for any that is not positive definite (or not finite); and whether none fell back. One (n, n) matrix per
    group alive at a time besides the caller's Gram: each step replaces ``h``."""
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    # a NaN anywhere reaches the factor's later diagonal entries: checking the diagonal costs n, not n^2
    finite = lambda f: torch.isfinite(f.diagonal(dim1=-2, dim2=-1)).all(-1)  # noqa: E731
    info = torch.empty(h.shape[:-2], dtype=torch.int32, device=h.device)
    torch.linalg.cholesky_ex(h, out=(h, info))  # in place: no second (n, n) matrix per group
    bad = (info != 0) | ~finite(h)
    if bad.any():
        h[bad] = eye
    torch.cholesky_inverse(h, out=h)
    torch.linalg.cholesky_ex(h, upper=True, out=(h, info))
    bad |= (info != 0) | ~finite(h)
    if bad.any():
        h[bad] = eye
    return h, not bool(bad.any())


def _lowest(score: Tensor, k: Tensor) -> Tensor:
    """(G, R, C) bool: in each row of each group the ``k[g]`` lowest scores, ties broken by position (the lower
    pruned first). One group: kthvalue and a trim of the ties (linear time: the sort below is several times
    slower on an LLM's 4096-row blocks); several: a stable sort, the same choice."""
    if score.shape[0] == 1 and score.shape[1] == 1:
        kk = int(k[0])
        flat = score[0, 0]
        if kk == 0:
            return torch.zeros_like(score, dtype=torch.bool)
        return _trim((flat <= flat.kthvalue(kk).values).contiguous(), flat, kk).reshape(score.shape)
    order = score.argsort(dim=-1, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(score.shape[-1], device=score.device)
                                            .expand_as(order).contiguous())
    return rank < k.to(score.device)[:, None, None]


def _share(sparsity: float, total: int, start: int, stop: int) -> int:
    """How many of the elements [start, stop) of ``total`` to prune so that every prefix prunes
    floor(sparsity * prefix + 0.5) of the elements before it."""
    whole = math.floor(sparsity * total + 0.5)
    cum = lambda c: math.floor(whole * c / total + 0.5) if total else 0  # noqa: E731
    return cum(stop) - cum(start)


def _trim(pruned: Tensor, score: Tensor, k: int) -> Tensor:
    """Ties at the threshold can prune more than ``k``: keep the surplus with the highest positions. ``pruned``
    is a fresh (contiguous) tensor, returned changed."""
    extra = int(pruned.sum()) - k
    if extra > 0:
        tied = (pruned & (score == score[pruned].max())).flatten().nonzero().flatten()
        pruned.view(-1)[tied[-extra:]] = False
    return pruned

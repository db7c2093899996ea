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

from .errors import ConfigError


def sparsegpt(weight: Tensor, gram: Tensor, sparsity: float = 0.5, n: int = 0, m: int = 0,
              keep: Tensor | None = None, blocksize: int = 128, percdamp: float = 0.01,
              per_row: bool = False) -> tuple[Tensor, Tensor, bool]:
    """(updated weight, keep mask, whether H was invertible) of one layer, weight and mask (rows, columns), the
    weight's dtype out. Columns no calibration input ever reached (zero diagonal of H) have their weights
    dropped, as the paper's implementation does, and are marked pruned in the mask, so a kept weight is never a
    dropped one. When H is not positive definite even after dampening, H^-1 is taken as the identity (as
    llm-compressor falls back): the weights are pruned by magnitude with no update, and the flag says so."""
    if weight.dim() != 2 or gram.shape != (weight.shape[1], weight.shape[1]):
        raise ConfigError(f"sparsegpt needs a (rows, columns) weight and a (columns, columns) Gram matrix, got "
                          f"{tuple(weight.shape)} and {tuple(gram.shape)}")
    dtype = torch.float64 if torch.float64 in (gram.dtype, weight.dtype) else torch.float32
    w = weight.detach().to(dtype).clone(memory_format=torch.contiguous_format)  # a transposed view (HF Conv1D)
    # would otherwise stay column-major, and every block's masks with it
    h = gram.detach().to(device=w.device, dtype=dtype).clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    if keep is not None:
        keep = keep.to(w.device) & ~dead[None]
    h.diagonal().add_(percdamp * torch.mean(torch.diag(h)))
    ok = True
    try:  # one (columns, columns) matrix alive at a time besides the caller's Gram: each step replaces h
        h = torch.linalg.cholesky(h)
        h = torch.cholesky_inverse(h)
        hinv = torch.linalg.cholesky(h, upper=True)
        del h
    except RuntimeError:  # torch.linalg.LinAlgError, and NaN inputs
        ok = False
        hinv = torch.eye(cols, dtype=dtype, device=w.device)
    pruned = torch.zeros_like(w, dtype=torch.bool) if keep is None else ~keep
    done = 0  # entries pruned so far (per row with per_row): a block's count is its cumulative share minus these
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        if keep is None and not n:
            score = w1.square() / torch.diag(h1).square()[None]
            # dead columns are pruned first and count towards the budget, so a block holding more of them than its
            # share makes the later blocks prune fewer: the layer's count stays exact (at least its dead entries)
            dead_b = dead[i1:i2]
            score[:, dead_b] = -math.inf
            # the layer's count, rounded once (nearest, halves up) and shared out over the blocks by cumulative
            # rounding, so the whole layer meets the engine's rounding rule rather than a floor per block
            if per_row:  # the same count in every row of the block
                k = max(_share(sparsity, cols, 0, i2) - done, int(dead_b.sum()))
                if k:
                    idx = score.topk(k, dim=1, largest=False).indices
                    pruned[:, i1:i2] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
            else:
                k = max(_share(sparsity, rows * cols, 0, rows * i2) - done, rows * int(dead_b.sum()))
                if k:
                    thresh = score.flatten().kthvalue(k).values
                    pruned[:, i1:i2] = _trim((score <= thresh).contiguous(), score, k)
            done += k
        for i in range(i2 - i1):
            col = w1[:, i]
            d = h1[i, i]
            if keep is None and n and i % m == 0:
                block = w1[:, i:i + m].square() / torch.diag(h1)[i:i + m].square()[None]
                idx = block.topk(n, dim=1, largest=False).indices
                pruned[:, i1 + i:i1 + i + m] = False
                pruned[:, i1 + i:i1 + i + m].scatter_(1, idx, True)
            q = col.masked_fill(pruned[:, i1 + i], 0)
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e[:, None] * h1[i, i:][None]
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    pruned[:, dead] = True
    return w.to(weight.dtype), ~pruned, ok


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

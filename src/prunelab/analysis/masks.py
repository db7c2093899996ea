"""Mask analysis: how alike masks are, what structure they have, and how stable training under them is,
each beside what independent random masks of the same densities would give.

Masks are ``{name: bool tensor}`` (e.g. :class:`~prunelab.masks.Masks`); every function works on any set of
them, from runs, seeds, methods or rounds.

- Jaccard similarity of alive weights, |A n B| / |A u B|, per tensor and overall (all tensors together).
  For independent uniformly random masks with k1 and k2 of n alive, |A n B| is hypergeometric; the per-tensor
  expectation ``random_jaccard`` is the exact E[X / (k1 + k2 - X)]. Overall, the expectation is the ratio of
  the summed per-tensor expected intersections and unions (exact in the limit of many weights).
- Structure of conv masks: fractions of all-zero filters, input channels and k x k kernels; a random mask
  with k of n alive zeroes a given group of g weights with probability C(n-g, k) / C(n, k).
- Stability: the relative distance between a sub-network's weights and the same weights of another model
  (e.g. the trained dense one), ||(w - v) m|| / ||v m||.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor


def jaccard(a: Tensor, b: Tensor) -> float:
    """|A n B| / |A u B| of two boolean masks of the same shape (1.0 when both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be compared")
    inter = int((a & b).sum())
    union = int((a | b).sum())
    return inter / union if union else 1.0


def overlap(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """|A n B| / min(|A|, |B|) over all tensors of two mask sets: 1.0 when the smaller lies inside the larger."""
    inter = sum(int((a[n].cpu() & b[n].cpu()).sum()) for n in a)
    small = min(sum(int(a[n].sum()) for n in a), sum(int(b[n].sum()) for n in b))
    return inter / small if small else 1.0


def _log_comb(n: Tensor | float, k: Tensor | float) -> Tensor:
    n, k = torch.as_tensor(n, dtype=torch.float64), torch.as_tensor(k, dtype=torch.float64)
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def random_jaccard(n: int, k1: int, k2: int) -> float:
    """Expected Jaccard similarity of two independent uniformly random masks with k1 and k2 of n alive."""
    if k1 + k2 == 0:
        return 1.0
    lo, hi = max(0, k1 + k2 - n), min(k1, k2)
    mean = k1 * k2 / n
    sd = math.sqrt(max(mean * (1 - k1 / n) * (n - k2) / max(n - 1, 1), 0.0))
    a, b = max(lo, int(mean - 40 * sd) - 1), min(hi, int(mean + 40 * sd) + 1)  # the rest has no mass
    x = torch.arange(a, b + 1, dtype=torch.float64)
    logp = _log_comb(k1, x) + _log_comb(n - k1, k2 - x) - _log_comb(n, k2)
    p = torch.exp(logp)
    return float((p * x / (k1 + k2 - x)).sum() / p.sum())


def similarity(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict:
    """Jaccard of two mask sets, overall and per tensor, each with its random expectation."""
    if list(a) != list(b):
        raise ValueError("the two mask sets name different tensors")
    layers, inter_e, union_e, inter, union = {}, 0.0, 0.0, 0, 0
    for name in a:
        x, y = a[name].cpu().bool(), b[name].cpu().bool()
        n, k1, k2 = x.numel(), int(x.sum()), int(y.sum())
        layers[name] = {"jaccard": jaccard(x, y), "random": random_jaccard(n, k1, k2)}
        inter += int((x & y).sum())
        union += int((x | y).sum())
        e = k1 * k2 / n
        inter_e += e
        union_e += k1 + k2 - e
    return {"jaccard": inter / union if union else 1.0, "random": inter_e / union_e if union_e else 1.0,
            "layers": layers}


def p_group_empty(n: int, k: int, g: int) -> float:
    """Probability that a given group of g weights is all pruned when k of n weights alive are drawn at random."""
    if k > n - g:
        return 0.0
    return float(torch.exp(_log_comb(n - g, k) - _log_comb(n, k)))


def structure(masks: Mapping[str, Tensor]) -> dict[str, dict]:
    """Per conv tensor (dim >= 3): fractions of all-zero filters, input channels and kernels, and the random
    expectation of each for the tensor's density."""
    out = {}
    for name, m in masks.items():
        if m.dim() < 3:
            continue
        m = m.cpu().bool()
        o, i = m.shape[:2]
        kk = m[0, 0].numel()
        n, k = m.numel(), int(m.sum())
        out[name] = {
            "density": k / n,
            "filters_empty": float((~m.reshape(o, -1).any(1)).double().mean()),
            "filters_random": p_group_empty(n, k, i * kk),
            "channels_empty": float((~m.transpose(0, 1).reshape(i, -1).any(1)).double().mean()),
            "channels_random": p_group_empty(n, k, o * kk),
            "kernels_empty": float((~m.reshape(o, i, -1).any(2)).double().mean()),
            "kernels_random": p_group_empty(n, k, kk),
        }
    return out


def weight_distance(weights: Mapping[str, Tensor], reference: Mapping[str, Tensor],
                    masks: Mapping[str, Tensor]) -> float:
    """||(w - v) m|| / ||v m|| over all masked tensors: how far the sub-network moved from the reference."""
    num = den = 0.0
    for name, m in masks.items():
        m = m.cpu().bool()
        w, v = weights[name].detach().cpu().double()[m], reference[name].detach().cpu().double()[m]
        num += float(((w - v) ** 2).sum())
        den += float((v ** 2).sum())
    return math.sqrt(num / den) if den else 0.0

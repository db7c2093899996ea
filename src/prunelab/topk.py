"""Exact top-k over one or many large score tensors without concatenating or sorting them.

``torch.topk`` and ``torch.kthvalue`` on a 100M-element tensor cost seconds and extra copies, and a global
threshold over a whole model would need one concatenated copy of every score. Here the k-th largest value
is found by bracketing it with quantiles of a small random sample, counting above the bracket, and solving
exactly inside the bracket, whose candidates are few. No maintained library offers this for a list of
tensors, so it is written here. Ties at the threshold are broken by position (tensor order, then flat index),
which makes the result deterministic. Boolean tensors are counted with ``torch.count_nonzero``, many
times faster than ``.sum()`` on CPU.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

SMALL = 1 << 21  # below this many elements, torch.kthvalue on a concatenation is fast enough
SAMPLE = 1 << 16


def all_true(mask: Tensor) -> bool:
    """``bool(mask.all())``, several times faster on large CPU tensors."""
    return int(torch.count_nonzero(mask)) == mask.numel()


def kth_largest(chunks: Sequence[Tensor], k: int) -> float:
    """The value v with count(x > v) < k <= count(x >= v) over all chunks (1-D float tensors); 1 <= k <= n."""
    n = sum(c.numel() for c in chunks)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside [1, {n}]")
    if n <= SMALL:
        flat = torch.cat([c.reshape(-1) for c in chunks]) if len(chunks) > 1 else chunks[0].reshape(-1)
        return flat.kthvalue(n - k + 1).values.item()
    gen = torch.Generator().manual_seed(0)
    sizes = torch.tensor([c.numel() for c in chunks], dtype=torch.float64)
    owner = torch.multinomial(sizes / n, SAMPLE, replacement=True, generator=gen)
    per_chunk = torch.bincount(owner, minlength=len(chunks)).tolist()
    sample = torch.cat([
        chunks[i].reshape(-1)[torch.randint(chunks[i].numel(), (per_chunk[i],), generator=gen)]
        for i in range(len(chunks))]).sort().values
    q = 1.0 - k / n  # quantile of the answer
    eps = 4.0 / math.sqrt(SAMPLE)
    while eps < 1.0:
        lo = sample[max(0, math.floor((q - eps) * SAMPLE))].item()
        hi = sample[min(SAMPLE - 1, math.ceil((q + eps) * SAMPLE))].item()
        above = sum(int(torch.count_nonzero(p > hi)) for c in chunks for p in c.reshape(-1).split(1 << 24))
        need = k - above  # how many of the answer's set lie in [lo, hi]
        if need >= 1:
            cand = torch.cat([_between(c.reshape(-1), lo, hi) for c in chunks])
            if need <= cand.numel() and cand.numel() <= max(SMALL, n // 8):
                return cand.kthvalue(cand.numel() - need + 1).values.item()
        eps *= 4
    flat = torch.cat([c.reshape(-1) for c in chunks])
    return flat.kthvalue(n - k + 1).values.item()


def _between(flat: Tensor, lo: float, hi: float, slice_len: int = 1 << 24) -> Tensor:
    """Entries of ``flat`` in [lo, hi], scanned in slices so the boolean temporaries stay small."""
    return torch.cat([c[(c >= lo) & (c <= hi)] for c in flat.split(slice_len)])


def _count(flat: Tensor, v: float, op: str, slice_len: int = 1 << 24) -> int:
    """count_nonzero(flat >= v) or (flat == v), in slices so no full-size temporary is made."""
    fn = torch.ge if op == "ge" else torch.eq
    return sum(int(torch.count_nonzero(fn(c, v))) for c in flat.split(slice_len))


def topk_counts(chunks: Sequence[Tensor], k: int) -> tuple[list[int], float | None]:
    """How many of the k largest entries (ties by position) fall in each chunk, and the k-th largest value
    (None when k selects nothing or everything)."""
    if k <= 0:
        return [0] * len(chunks), None
    n = sum(c.numel() for c in chunks)
    if k >= n:
        return [c.numel() for c in chunks], None
    v = kth_largest(chunks, k)
    counts = [sum(int(torch.count_nonzero(p > v)) for p in c.reshape(-1).split(1 << 24)) for c in chunks]
    rest = k - sum(counts)
    for i, c in enumerate(chunks):  # hand out ties in tensor order
        if rest <= 0:
            break
        take = min(rest, _count(c.reshape(-1), v, "eq"))
        counts[i] += take
        rest -= take
    return counts, v


def topk_mask(scores: Tensor, k: int, hint: float | None = None) -> Tensor:
    """Boolean mask of the k largest entries of ``scores`` (any shape); ties go to the lowest flat index.

    ``hint``: a candidate for the k-th largest value (e.g. a global threshold already found); it is used
    only after checking that it is one, which costs one pass instead of a search.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    mask = None
    if hint is not None:
        above = flat > hint
        n_above = int(torch.count_nonzero(above))
        if n_above == k:  # the usual case for all tensors but the one holding the threshold: no tie to share
            return above.reshape(scores.shape)
        if n_above < k <= _count(flat, hint, "ge"):
            v, mask = hint, above
    if mask is None:
        v = kth_largest([flat], k)
        mask = flat > v
    rest = k - int(torch.count_nonzero(mask))
    if rest > 0:
        if _count(flat, v, "eq") == rest:  # the usual case: no surplus ties, no index list needed
            for m_part, f_part in zip(mask.split(1 << 24), flat.split(1 << 24)):
                m_part |= f_part == v
        else:
            mask[(flat == v).nonzero().squeeze(1)[:rest]] = True
    return mask.reshape(scores.shape)

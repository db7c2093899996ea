"""Exact top-k over one or many large score tensors without concatenating or sorting them.

:func:`streamed_topk_masks` does it without the score tensors at all, scoring slices of the weights as it
goes (see :mod:`prunelab.engine.streaming`); the other functions work on scores already computed.

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
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

SMALL = 1 << 21  # below this many elements, torch.kthvalue on a concatenation is fast enough
SAMPLE = 1 << 16
SLICE = 1 << 18  # streamed passes work on slices this long: their scratch stays in the core's cache


def all_true(mask: Tensor) -> bool:
    """``bool(mask.all())``, several times faster on large CPU tensors."""
    return int(torch.count_nonzero(mask)) == mask.numel()


def any_rows(mask: Tensor) -> Tensor:
    """``mask.reshape(len(mask), -1).any(1)``: which rows hold a True. On CPU through NumPy, whose bool
    reductions are 10-50x faster than torch's (0.11 s of a ResNet-50's 0.8 s channel pruning went here)."""
    rows = mask.reshape(mask.shape[0], -1)
    if rows.device.type == "cpu" and rows.dtype == torch.bool:
        return torch.from_numpy(rows.numpy().any(1))
    return rows.any(1)


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


def streamed_topk_masks(chunks: Sequence[Tensor], k: int, score: Callable[[Tensor, Tensor], None],
                        alive: Sequence[Tensor | None]) -> list[Tensor] | None:
    """Boolean masks of the k highest scores over many flat tensors, scores computed slice by slice.

    ``chunks``: flat contiguous weights; ``score(values, out)`` writes a slice's float32 scores; ``alive``: a
    flat bool per chunk (False entries score -inf) or None. Ties at the k-th largest score go to the lowest
    position (chunk order, then flat index): the same masks as :func:`topk_counts` then :func:`topk_mask` on
    the full scores. Returns None when the one-pass bracket fails (heavy ties, mostly dead entries): the
    caller then scores in full.

    One pass: every slice is scored into a cache-sized buffer, ``score > hi`` is written straight into the
    output mask (and counted), and the few scores in [lo, hi] are kept with their positions ([lo, hi] brackets
    the answer: four standard errors either side of a random sample's quantile, about 1 % of the entries at
    90 % sparsity); the exact k-th largest is then solved among them and their mask bits set. Extra memory:
    the masks (the output) plus the bracket's candidates.
    """
    n = sum(c.numel() for c in chunks)
    if not 0 < k < n:
        return None
    sample = _sample_scores(chunks, score, alive)
    q = 1.0 - k / n
    eps = 4.0 * math.sqrt(q * (1 - q) / SAMPLE) + 2.0 / SAMPLE  # 4 standard errors of the sample's quantile
    masks = [torch.empty(c.shape, dtype=torch.bool) for c in chunks]
    buf = torch.empty(min(SLICE, max(c.numel() for c in chunks)))
    inside = torch.empty(buf.numel(), dtype=torch.bool)
    for _ in range(2):  # a bracket missing the answer is a 4-sigma event; the second is 4x wider
        lo = sample[max(0, math.floor((q - eps) * SAMPLE))].item()
        hi = sample[min(SAMPLE - 1, math.ceil((q + eps) * SAMPLE))].item()
        found = _bracket_pass(chunks, masks, score, alive, lo, hi, buf, inside, limit=max(SMALL, n // 8))
        if found is not None:
            above, pos, vals = found
            need = k - above
            if 1 <= need <= vals.numel():
                break
        eps *= 4
    else:
        return None
    v = vals.kthvalue(vals.numel() - need + 1).values
    chosen = vals > v
    ties = (vals == v).nonzero().squeeze(1)[: need - int(torch.count_nonzero(chosen))]
    chosen[ties] = True
    for mask, p in zip(masks, pos):
        take = chosen[: p.numel()]
        mask[p[take]] = True
        chosen = chosen[p.numel():]
    return masks


def _sample_scores(chunks, score, alive) -> Tensor:
    """SAMPLE scores drawn uniformly over all entries (fixed seed: the same masks every time), sorted."""
    gen = torch.Generator().manual_seed(0)
    n = sum(c.numel() for c in chunks)
    sizes = torch.tensor([c.numel() for c in chunks], dtype=torch.float64)
    owner = torch.multinomial(sizes / n, SAMPLE, replacement=True, generator=gen)
    parts = []
    for i, m in enumerate(torch.bincount(owner, minlength=len(chunks)).tolist()):
        at = torch.randint(chunks[i].numel(), (m,), generator=gen)
        part = torch.empty(m)
        score(chunks[i][at], part)
        if alive[i] is not None:
            part.masked_fill_(~alive[i][at], float("-inf"))
        parts.append(part)
    return torch.cat(parts).sort().values


class NotFinite(Exception):
    """A streamed pass met a NaN or infinite score; ``chunk`` is the index of the tensor that holds it."""

    def __init__(self, chunk: int) -> None:
        super().__init__(chunk)
        self.chunk = chunk


def _bracket_pass(chunks, masks, score, alive, lo: float, hi: float, buf: Tensor, inside: Tensor, limit: int):
    """Write ``score > hi`` into the masks; return (count above hi, candidate positions per chunk, candidate
    scores in position order) for scores in [lo, hi], or None once more than ``limit`` candidates appear.
    NotFinite for a chunk with a NaN or infinite score: each slice's sum, taken while it is in cache, is the
    check (a separate isfinite pass read every weight again: half the time of a 100M-weight global pass)."""
    above, found, pos, vals = 0, 0, [], []
    for i, (c, mask, live) in enumerate(zip(chunks, masks, alive)):
        cpos = []
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, c.numel(), SLICE):
            stop = min(start + SLICE, c.numel())
            b, ins, m = buf[: stop - start], inside[: stop - start], mask[start:stop]
            score(c[start:stop], b)
            total += b.sum(dtype=torch.float64)  # NaN and inf propagate; finite float32 scores cannot overflow it
            if live is not None:
                b.masked_fill_(live[start:stop].logical_not(), float("-inf"))
            torch.gt(b, hi, out=m)
            above += int(torch.count_nonzero(m))
            torch.ge(b, lo, out=ins)
            ins ^= m  # lo <= score <= hi
            at = _true_positions(ins)
            found += at.numel()
            if found > limit:
                return None
            vals.append(b[at])
            cpos.append(at + start)
        if not torch.isfinite(total):
            raise NotFinite(i)
        pos.append(torch.cat(cpos) if cpos else torch.empty(0, dtype=torch.int64))
    return above, pos, torch.cat(vals)


def _true_positions(flags: Tensor) -> Tensor:
    """``flags.nonzero()`` for a sparse bool vector, about 8x faster: scan it as 64-bit words (8 flags each),
    then look inside the nonzero words only. ``flags`` must start at an 8-byte aligned address (a buffer)."""
    n8 = flags.numel() // 8 * 8
    words = flags[:n8].view(torch.int64).nonzero().squeeze(1)
    at = (words.unsqueeze(1) * 8 + torch.arange(8)).reshape(-1)
    at = at[flags[at]]
    if n8 < flags.numel():
        at = torch.cat([at, flags[n8:].nonzero().squeeze(1) + n8])
    return at


"""When a pruning pass can stream its scores, and the pass itself.

The pipeline's general path holds every score tensor at once (as large as the weights) and then searches
them. When the scores are elementwise (:attr:`Criterion.elementwise`: magnitude, l2), the granularity is
the single weight, the allocation one global threshold over elements and the selector a plain top-k, the
same masks come from one streamed pass over the weights (:func:`prunelab.engine.topk.streamed_topk_masks`):
no score tensor exists beyond a cache-sized slice. The result is bit-identical to the general path's
(tests/test_streaming.py), so this is a speed and memory choice the engine makes, not a different method.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .allocation import Global, round_keep
from .granularity import Element
from .selection import TopK
from ..targets import Layout, not_finite_error
from .topk import SMALL, NotFinite, streamed_topk_masks


def can_stream(method, steps: list, params: Mapping[str, Tensor], layouts: Mapping[str, Layout]) -> bool:
    """True when this pass's masks can come from :func:`streamed_masks` (see the module docstring).

    Transposed layouts are left to the general path, whose ties go by canonical (out, in) position; small
    models too, where holding the scores costs nothing.
    """
    if len(steps) != 1 or type(steps[0][0]) is not Element:
        return False
    alloc = method.allocation_
    if not (getattr(method.criterion_, "elementwise", False) and type(alloc) is Global and alloc.unit == "elements"
            and type(method.selector_) is TopK):
        return False
    if any(layouts[n].transposed for n in params):
        return False
    if any(p.device.type != "cpu" or not p.is_contiguous() for p in params.values()):
        return False
    return sum(p.numel() for p in params.values()) > SMALL


def streamed_masks(criterion, params: Mapping[str, Tensor], masks: Mapping[str, Tensor], dense: set,
                   sparsity: float, floor: str = "none") -> dict[str, Tensor] | None:
    """The new masks of one global element-wise pass at ``sparsity``, or None when the streamed search
    gives up or the result empties what the allocation's ``floor`` keeps (a row, a tensor: the general path,
    which raises the floor, then decides). Pruned weights stay pruned (masks nest)."""
    total = sum(p.numel() for p in params.values())
    k = round_keep(1 - sparsity, total)  # nothing or everything kept: streamed_topk_masks leaves it to the caller
    with torch.no_grad():
        chunks = [p.detach().reshape(-1) for p in params.values()]
        alive = [None if n in dense else masks[n].reshape(-1) for n in params]
        try:
            found = streamed_topk_masks(chunks, k, criterion.score_slice, alive)
        except NotFinite as exc:  # checked inside the pass, slice by slice, instead of a read of its own
            raise not_finite_error(list(params)[exc.chunk]) from None
    if found is None:
        return None
    new = {}
    for (name, p), mask in zip(params.items(), found):
        mask = mask.reshape(p.shape)
        if name not in dense:
            mask &= masks[name]
        new[name] = mask
        if floor != "none" and _emptied(mask, masks[name] if name not in dense else None, floor == "rows"):
            return None
    return new


def _emptied(mask: Tensor, before: Tensor | None, rows: bool) -> bool:
    """Whether ``mask`` empties a row (``rows``, tensors of 2 or more dimensions) or the tensor, that was alive."""
    if rows and mask.dim() >= 2:
        had = _rows_any(before) if before is not None else True
        return bool((had & ~_rows_any(mask)).any())
    return bool(mask.numel()) and not bool(mask.any()) and (before is None or bool(before.any()))


def _rows_any(mask: Tensor) -> Tensor:
    """``mask.reshape(rows, -1).any(1)``, read as 64-bit words where the rows allow it (8 flags a word: bool
    ``any`` over a row ran at about 1 GB/s, a third of a 100M-weight global pass)."""
    flat = mask.reshape(len(mask), -1)
    if flat.shape[1] % 8 == 0 and flat.is_contiguous() and flat.data_ptr() % 8 == 0:
        return flat.view(torch.int64).ne(0).any(1)
    return flat.any(1)

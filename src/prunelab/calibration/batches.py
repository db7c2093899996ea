"""Calibration batches, read once: the first ``samples`` model inputs of whatever the caller hands over.

A one-shot iterator (a generator, a DataLoader iterator) is read exactly once, here, so every pass of a
calibration (a chain check, a catching pass, one pass per target) sees the same inputs, and nothing is lost to
a check. Inputs stay where the caller put them (host or device); each pass moves one batch at a time to the
compute device. Under torchrun each rank keeps its share of the samples (:func:`share`).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Iterable

from torch import Tensor

from ..errors import ConfigError
from ..inputs import map_tensors

Chunk = tuple[Any, int]  # (model inputs, how many samples they hold)


def pairs_hold_targets(batches: Any, targets: bool | None, forward: Callable | None) -> bool | None:
    """Whether a 2-item batch is ``(inputs, targets)``: as the caller says (``targets``), else as the data set
    says (a loader's ``yields_targets``), else as the model's ``forward`` makes it unambiguous (one positional
    input: targets; two or more required: two inputs, ``nn.Transformer(src, tgt)``); None when it does not
    (a second positional input is optional: ``forward(x, scale=None)``, a Hugging Face model's attention mask)."""
    if targets is not None:
        return targets
    said = getattr(batches, "yields_targets", None)
    if isinstance(said, bool):
        return said
    try:
        params = list(inspect.signature(forward).parameters.values()) if forward is not None else None
    except (TypeError, ValueError):
        params = None
    if params is None:
        return None
    positional = [q for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    if sum(q.default is q.empty for q in positional) >= 2:
        return False
    if len(positional) <= 1 and not any(q.kind == q.VAR_POSITIONAL for q in params):
        return True
    return None


def _inputs(batch: Any, targets: bool | None, index: int) -> Any:
    """The model inputs of one batch: the first item of an ``(inputs, targets)`` pair (see
    :func:`pairs_hold_targets`); ConfigError when a pair's meaning is not known."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and not isinstance(batch[1], Mapping)):
        return batch
    if targets is None:
        raise ConfigError(f"calibration batch {index} is a pair, and the model's forward takes a second positional "
                          "input too: say what it is, pruner.calibrate(batches, targets=True) for (inputs, "
                          "targets), targets=False for two inputs")
    return batch[0] if targets else batch


def _check_kind(x: Any, index: int) -> None:
    ok = isinstance(x, Tensor) or (isinstance(x, Mapping) and all(isinstance(k, str) for k in x)) or (
        isinstance(x, (tuple, list)) and len(x) > 0 and (isinstance(x[0], Tensor) or _image_list(x)))
    if not ok or not _leaves(x):
        raise ConfigError(f"calibration batch {index} is a {type(x).__name__}, not model inputs: each batch must "
                          "be a tensor, a tuple or a dict of tensors, a tuple whose first input is a list of "
                          "images (a torchvision detector's), or an (inputs, targets) pair")


def _image_list(x: Any) -> bool:
    """Positional inputs whose first is a list of tensors, one per sample: a torchvision detector's images,
    which may differ in size."""
    return (isinstance(x, (tuple, list)) and len(x) > 0 and isinstance(x[0], list) and len(x[0]) > 0
            and all(isinstance(t, Tensor) for t in x[0]))


def _leaves(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    values = x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
    return [t for v in values for t in _leaves(v)]


def batch_size(x: Any) -> int:
    """How many samples a batch of model inputs holds: the leading size of its first tensor that has one."""
    if _image_list(x):
        return len(x[0])
    leaves = [t for t in _leaves(x) if t.dim() > 0]
    return leaves[0].shape[0] if leaves else 1


def _cut(x: Any, n: int, start: int, stop: int) -> Any:
    """Samples [start, stop) of a batch of ``n`` (tensors without that leading size are shared, kept whole)."""
    if _image_list(x):
        return type(x)([x[0][start:stop], *x[1:]])
    return map_tensors(x, lambda t: t[start:stop] if t.dim() > 0 and t.shape[0] == n else t)


def materialise(batches: Iterable, samples: int, targets: bool | None = None,
                forward: Callable | None = None) -> list[Chunk]:
    """The first ``samples`` inputs of ``batches`` as (inputs, count) chunks, the last one cut to reach
    ``samples`` exactly; a pair is read by :func:`pairs_hold_targets` (``targets``, the model's ``forward``).
    ConfigError, in one sentence, for batches that are not an iterable of model inputs (one tensor, a dict, a
    string) and for none at all."""
    if isinstance(batches, Tensor):
        raise ConfigError(f"calibration takes an iterable of batches, got one tensor of shape "
                          f"{tuple(batches.shape)}: pass [tensor] for a single batch")
    if isinstance(batches, (str, bytes, Mapping)) or not isinstance(batches, Iterable):
        raise ConfigError(f"calibration takes an iterable of batches (a list of tensors, a DataLoader), got "
                          f"{type(batches).__name__}")
    pairs = pairs_hold_targets(batches, targets, forward)
    chunks: list[Chunk] = []
    seen = 0
    for i, batch in enumerate(batches):
        x = _inputs(batch, pairs, i)
        _check_kind(x, i)
        n = batch_size(x)
        take = min(n, samples - seen)
        chunks.append((_cut(x, n, 0, take) if take < n else x, take))
        seen += take
        if seen >= samples:
            break
    if seen == 0:
        raise ConfigError("the calibration data is empty: give at least one batch of model inputs")
    return chunks


def share(chunks: list[Chunk], rank: int, world: int) -> list[Chunk]:
    """Rank ``rank``'s share of the samples, contiguous: samples [r N / W, (r + 1) N / W) of N in all; the
    shares of all ranks are the samples of one process, each once."""
    total = sum(n for _, n in chunks)
    lo, hi = rank * total // world, (rank + 1) * total // world
    out, start = [], 0
    for x, n in chunks:
        a, b = max(lo, start) - start, min(hi, start + n) - start
        if a < b:
            out.append((_cut(x, n, a, b) if (a, b) != (0, n) else x, b - a))
        start += n
    return out

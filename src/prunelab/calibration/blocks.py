"""Blocks: the chain of repeated modules (a transformer's layers) that calibration runs one at a time.

Which modules are the blocks: the caller's ``sequential_targets`` globs over module names (outermost matches),
else a Hugging Face model's ``_no_split_modules`` classes, else the children of the ``nn.ModuleList`` /
``nn.Sequential`` of one module type that holds the most targets (at least two blocks). Before trusting them,
one batch checks that each block's output is exactly the next one's input (:func:`chained`); the inputs of
the first block are then caught once for every calibration sample, the forward pass stopping there
(:func:`catch`), and each block runs alone on them. With a compute ``device`` apart from the model's,
:func:`onloaded` keeps the blocks on the host and moves each one to the device only while it runs.
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..inputs import map_tensors
from .batches import Chunk
from .observers import hooked, run_model


class _Caught(Exception):
    """Raised by the hook that catches the first block's inputs: the rest of the forward pass is not needed."""


def find_blocks(model: nn.Module, targets: Mapping[str, Tensor], globs: Sequence[str] | None = None
                ) -> tuple[list[nn.Module], bool]:
    """(blocks in the model's order, whether the caller named them); see the module docstring."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if globs:
        hits = [(n, m) for n, m in named if any(fnmatch.fnmatchcase(n, g) for g in globs)]
        if not hits:
            raise ConfigError(f"sequential_targets {list(globs)} match no module of the model (module names "
                              f"look like {', '.join(n for n, _ in named[:3])})")
        return _outermost(hits), True
    ids = {id(p) for p in targets.values()}
    classes = getattr(model, "_no_split_modules", None)
    if isinstance(classes, (list, tuple, set)) and classes:
        hits = [(n, m) for n, m in named if type(m).__name__ in classes]
        blocks = _outermost(hits)
        if len(blocks) >= 2 and any(id(p) in ids for b in blocks for p in b.parameters()):
            return blocks, False
    best: list[nn.Module] = []
    best_count = 0
    for m in model.modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) < 2:
            continue
        kids = list(m.children())
        if len({type(k) for k in kids}) != 1:
            continue
        counts = [sum(id(p) in ids for p in k.parameters()) for k in kids]
        if all(counts) and sum(counts) > best_count:
            best, best_count = kids, sum(counts)
    return best, False


def _outermost(hits: list[tuple[str, nn.Module]]) -> list[nn.Module]:
    names = [n for n, _ in hits]
    return [m for n, m in hits if not any(n.startswith(o + ".") for o in names)]


def first(out: Any) -> Tensor:
    """A block's hidden-state output: the output itself, or the first item of a tuple."""
    return out[0] if isinstance(out, (tuple, list)) else out


def chained(model: nn.Module, blocks: list[nn.Module], x: Any) -> bool:
    """True when, on inputs ``x``, each block's first output is exactly the next block's first input. The pass
    stops after the last block (a language model's head on one batch is the largest temporary of a calibration:
    262 MiB of logits for 4 x 512 tokens of a 32,000-token vocabulary)."""
    seen_in: dict[int, Any] = {}
    seen_out: dict[int, Any] = {}

    def hook(i):
        def fn(module, args, kwargs, output):
            seen_in.setdefault(i, args[0] if args else next(iter(kwargs.values()), None))
            seen_out.setdefault(i, first(output))
            if len(seen_out) == len(blocks):
                raise _Caught
        return fn
    with hooked(model, {b: hook(i) for i, b in enumerate(blocks)}):
        try:
            run_model(model, x)
        except _Caught:
            pass
    return len(seen_in) == len(blocks) and all(
        isinstance(seen_in[i + 1], Tensor) and isinstance(seen_out[i], Tensor)
        and seen_in[i + 1].shape == seen_out[i].shape and torch.equal(seen_in[i + 1], seen_out[i])
        for i in range(len(blocks) - 1))


Call = tuple[tuple, dict]  # a block's (args, kwargs); args[0] is the hidden state


def catch(model: nn.Module, block: nn.Module, chunks: list[Chunk], device: torch.device,
          host: torch.device | None, cache_dtype: torch.dtype | None) -> list[Call]:
    """The (args, kwargs) the first block is called with, for every chunk; kept on ``host`` (None: where they
    were computed), the hidden state in ``cache_dtype`` when given."""
    cached: list[Call] = []

    def grab(module, args, kwargs):
        if not args:  # the hidden state passed by keyword: made positional, so every block call is alike
            key = next(iter(kwargs))
            args, kwargs = (kwargs[key],), {k: v for k, v in kwargs.items() if k != key}
        cached.append(store((tuple(args), dict(kwargs)), host, cache_dtype))
        raise _Caught
    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with hooked(model, {}):
            for x, _ in chunks:
                try:
                    run_model(model, to(x, device))
                except _Caught:
                    pass
    finally:
        handle.remove()
    return cached


def store(call: Call, host: torch.device | None, cache_dtype: torch.dtype | None) -> Call:
    """A block call as cached: its tensors on ``host``, the hidden state in ``cache_dtype`` (its own dtype is
    remembered in the kwargs under a private key, so it is restored exactly before the block runs)."""
    args, kwargs = call
    h = args[0]
    kwargs = dict(kwargs)
    if cache_dtype is not None and isinstance(h, Tensor) and h.is_floating_point() and h.dtype != cache_dtype:
        kwargs["__dtype__"] = h.dtype
        h = h.to(cache_dtype)
    if host is not None:
        h = h.to(host)
        kwargs = {k: (map_tensors(v, lambda t: t.to(host)) if k != "__dtype__" else v) for k, v in kwargs.items()}
        args = tuple(map_tensors(a, lambda t: t.to(host)) for a in args[1:])
        return (h, *args), kwargs
    return (h, *args[1:]), kwargs


def load(call: Call, device: torch.device) -> Call:
    """A cached block call ready to run on ``device``."""
    args, kwargs = call
    kwargs = dict(kwargs)
    dtype = kwargs.pop("__dtype__", None)
    h = args[0].to(device=device, dtype=dtype) if dtype is not None else args[0].to(device)
    return (h, *to(tuple(args[1:]), device)), to(kwargs, device)


def to(x: Any, device: torch.device) -> Any:
    """Every tensor of ``x`` on ``device`` (no copy when it is there already)."""
    return map_tensors(x, lambda t: t.to(device))


def home(model: nn.Module) -> torch.device:
    """Where the model's parameters (else buffers) are; the CPU for a model with neither."""
    t = next(model.parameters(), None)
    t = t if t is not None else next(model.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def _move_own(module: nn.Module, device: torch.device) -> None:
    """The module's own parameters and buffers (not its children's) to ``device``, the Parameter objects kept."""
    for p in module._parameters.values():
        if p is not None and p.device != device:
            p.data = p.data.to(device)
    for k, b in module._buffers.items():
        if b is not None and b.device != device:
            module._buffers[k] = b.to(device)


def _move(module: nn.Module, device: torch.device) -> None:
    for m in module.modules():
        _move_own(m, device)


@contextmanager
def onloaded(model: nn.Module, blocks: list[nn.Module], device: torch.device | None, disk=None
             ) -> Iterator[torch.device | None]:
    """Within the block, every module outside ``blocks`` on ``device`` (the blocks stay where they are: see
    :func:`on_device` and :func:`passing`); yields the model's own device when a device is given, else None.
    Everything is back where it was on exit, also on an error. Without blocks the whole model moves. With
    ``disk`` (a :class:`~prunelab.calibration.disk.DiskWeights`) the weights are read from it and go back to it,
    written where they changed, and the host (where cached inputs wait) is the CPU."""
    if device is None:
        yield None
        return
    where = home(model)  # a device given is honoured even when it is the model's own (the same code path)
    inside = {id(m) for b in blocks for m in b.modules()}
    outside = [m for m in model.modules() if id(m) not in inside]
    try:
        if disk is not None:
            disk.onload(outside, device)
            yield torch.device("cpu")
            return
        for m in outside:
            _move_own(m, device)
        yield where
    finally:
        if disk is not None:
            disk.offload(outside, "outside")
            for b in blocks:  # a block left read by an error goes back unwritten only if unchanged
                disk.offload(list(b.modules()), disk.name(b))
        else:
            _move(model, where)


def _onto(block: nn.Module, device: torch.device, disk) -> None:
    if disk is not None:
        disk.onload(block.modules(), device)
    else:
        _move(block, device)


def _back(block: nn.Module, where: torch.device, disk) -> None:
    if disk is not None:
        disk.offload(list(block.modules()), disk.name(block))
    else:
        _move(block, where)


@contextmanager
def passing(blocks: list[nn.Module], device: torch.device, where: torch.device | None, disk=None) -> Iterator[None]:
    """Within the block, a forward pass of the whole model moves each block to ``device`` while it runs and
    back to ``where`` (or ``disk``) after (no-op when ``where`` is None: nothing is onloaded)."""
    if where is None:
        yield
        return
    handles = []
    for b in blocks:
        handles.append(b.register_forward_pre_hook(lambda m, a: _onto(m, device, disk)))
        handles.append(b.register_forward_hook(lambda m, a, o: _back(m, where, disk)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def on_device(block: nn.Module, device: torch.device, where: torch.device | None, disk=None) -> Iterator[None]:
    """``block`` on ``device`` within the block, back at ``where`` (or ``disk``, written if its weights
    changed) after; no-op when ``where`` is None."""
    if where is None:
        yield
        return
    _onto(block, device, disk)
    try:
        yield
    finally:
        _back(block, where, disk)

"""Sequential calibration: targets measured in the model's order, each on the inputs that the targets before it
produce once they are pruned (and reconstructed), as SparseGPT and Wanda prune large models.

:func:`sequential_stats` is a generator of ``{target: InputStats}`` groups; the caller decides each group and
writes its new weights before asking for the next group, whose statistics then see them.

Where the model is a chain of repeated blocks (the longest ``nn.ModuleList``/``nn.Sequential`` of one block type
holding targets: a transformer's layers), the inputs of the first block are caught once for every calibration
sample (the forward pass stops there), and each block then runs alone on the cached inputs: once to measure its
targets, once more, after the caller's update, to produce the next block's inputs. Calibration thus costs about
two forward passes in all, however many targets there are, and holds one block's inputs and outputs, never a
second model. Before trusting the chain, one batch checks that each block's output is the next one's input;
when it is not (or there are no blocks), and for targets outside the blocks, each target is measured with a
full forward pass of its own (exact, one pass per target).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from .calibration import InputStats, check_reached, hooked, input_stats, model_inputs, owners, run_model, stat_hooks


class _Caught(Exception):
    """Raised by the hook that catches the first block's inputs: the rest of the forward pass is not needed."""


def find_blocks(model: nn.Module, targets: Mapping[str, Tensor]) -> list[nn.Module]:
    """The children of the container of same-type blocks that holds the most targets (at least two blocks)."""
    ids = {id(p) for p in targets.values()}
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
    return best


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _chained(model: nn.Module, blocks: list[nn.Module], x: Any) -> bool:
    """True when, on inputs ``x``, each block's first output is exactly the next block's first input."""
    seen_in: dict[int, Any] = {}
    seen_out: dict[int, Any] = {}

    def hook(i):
        def fn(module, args, kwargs, output):
            seen_in.setdefault(i, args[0] if args else None)
            seen_out.setdefault(i, _first(output))
        return fn
    with hooked(model, {b: hook(i) for i, b in enumerate(blocks)}):
        run_model(model, x)
    return len(seen_in) == len(blocks) and all(
        isinstance(seen_in[i + 1], Tensor) and isinstance(seen_out[i], Tensor)
        and seen_in[i + 1].shape == seen_out[i].shape and torch.equal(seen_in[i + 1], seen_out[i])
        for i in range(len(blocks) - 1))


def sequential_stats(model: nn.Module, targets: Mapping[str, Tensor], batches: Iterable, samples: int,
                     gram: bool = False) -> Iterator[dict[str, InputStats]]:
    """Groups of target statistics in the model's order (see the module docstring). Every target appears in
    exactly one group; the caller updates a group's weights before taking the next one."""
    blocks = find_blocks(model, targets)
    if blocks:
        first = next(model_inputs(model, batches, samples))[0]
        if not _chained(model, blocks, first):
            blocks = []
    if not blocks:
        for name, p in targets.items():
            yield input_stats(model, {name: p}, batches, samples, gram)
        return
    inside = {id(p) for b in blocks for p in b.parameters()}
    order = {id(p): i for i, p in enumerate(model.parameters())}
    start = min(order[id(p)] for p in blocks[0].parameters())
    before = {n: p for n, p in targets.items() if id(p) not in inside and order.get(id(p), 0) < start}
    after = {n: p for n, p in targets.items() if id(p) not in inside and n not in before}
    for name, p in before.items():
        yield input_stats(model, {name: p}, batches, samples, gram)
    cached = _catch(model, blocks[0], batches, samples)
    for block in blocks:
        mine = {n: p for n, p in targets.items() if any(p is q for q in block.parameters())}
        mods = owners(block, mine)
        hooks, stats = stat_hooks(mods, gram)
        with hooked(block, hooks):
            for args, kwargs in cached:
                block(*args, **kwargs)
        check_reached(mods, stats)
        yield stats
        with hooked(block, {}):  # the next block's inputs, from this block as the caller left it
            cached = [((_first(block(*args, **kwargs)),) + tuple(args[1:]), kwargs) for args, kwargs in cached]
    for name, p in after.items():
        yield input_stats(model, {name: p}, batches, samples, gram)


def _catch(model: nn.Module, block: nn.Module, batches: Iterable, samples: int) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) the first block is called with, for every calibration batch."""
    cached: list[tuple[tuple, dict]] = []

    def catch(module, args, kwargs):
        cached.append((tuple(args), dict(kwargs)))
        raise _Caught
    handle = block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with hooked(model, {}):
            for x, _ in model_inputs(model, batches, samples):
                try:
                    run_model(model, x)
                except _Caught:
                    pass
    finally:
        handle.remove()
    return cached

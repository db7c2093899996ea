"""The calibration pipeline: groups of target statistics, in the order the Pruner decides them.

:func:`groups` is a generator of :class:`Group`; the Pruner decides each group and writes its weights before
asking for the next, whose statistics then see them (sequential), and it is the only caller.

- Not sequential: one group of every target, from full forward passes of the model as it is.
- Sequential, the model a chain of blocks (:mod:`.blocks`): targets before the first block, one full pass each;
  then the first block's inputs are caught once for every sample, and each block runs alone on them: once per
  pass to measure its targets, once more, after the Pruner's writes, to produce the next block's inputs, which
  replace the cached ones in place. After the blocks, the targets outside them, one full pass each. About two
  forward passes in all, one block's inputs held, never a second model.
- Sequential without a chain (or blocks that are not one): one full pass per target, in the model's order.

With a compute ``device`` apart from the model's, the modules outside the blocks move there for the event and
each block only while it runs; cached inputs stay on the host (optionally in a smaller dtype). Under torchrun
each rank measures its share of the samples and every group's statistics are summed across ranks.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError, first_line
from .batches import Chunk, share
from .blocks import Call, catch, chained, find_blocks, first, load, on_device, onloaded, passing, store, to, home
from .distributed import reduce, world
from .module_stats import influence_hooks, routing_hooks
from .observers import InputStats, check_reached, hooked, owners, run_model, stat_hooks
from .request import Calibration, Options


@dataclass
class Group:
    """Statistics of one group of targets for one pass (``index``) of the request; ``block`` names the block
    that holds them (None: measured by full passes)."""

    names: tuple[str, ...]
    stats: dict[str, InputStats]
    index: int
    block: str | None = None
    of: tuple[int, int] | None = None  # (this block's position from 1, how many blocks), for progress lines


@contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Eval mode, no gradients and no key-value cache (a Hugging Face model's ``config.use_cache``) for the
    duration, all restored after: a cache grows with every block call and changes what later calls see."""
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    was = model.training
    model.eval()
    try:
        if cache:
            config.use_cache = False
        with torch.no_grad():
            yield
    finally:
        if cache:
            config.use_cache = cache
        model.train(was)


def groups(model: nn.Module, targets: Mapping[str, nn.Parameter], request: Calibration, chunks: list[Chunk],
           opts: Options) -> Iterator[Group]:
    """The groups of ``request`` over ``targets`` (see the module docstring); every target appears once per pass."""
    rank, size = world(opts.distributed)
    if size > 1:
        total = sum(n for _, n in chunks)
        if total < size:
            raise ConfigError(f"{total} calibration samples cannot be shared by {size} ranks: give at least one "
                              "per rank")
        chunks = share(chunks, rank, size)
    ctx = _Run(request.passes, opts.precision, size)
    disk = opts.offload
    if disk is None and any(p.is_meta for p in targets.values()):
        raise ConfigError("the weights are on the meta device (no values): calibrate a model opened with "
                          "prunelab.calibration.disk.open_on_disk with offload=its DiskWeights, or load the weights")
    with calibrating(model):
        wanted = request.sequential or opts.device is not None or disk is not None
        blocks, named = find_blocks(model, targets, opts.sequential_targets) if wanted else ([], False)
        onto = opts.device or (torch.device("cpu") if disk is not None else None)
        device = onto or home(model)
        if request.sequential and blocks and not _chained_onloaded(model, blocks, chunks[0][0], onto, disk):
            if named:
                raise ConfigError("the blocks sequential_targets names are not a chain: a block's output is not the "
                                  "next block's input")
            blocks = []
        if disk is not None:  # what is outside the blocks is read whole for the event: no targets there
            inside = {id(p) for b in blocks for p in b.parameters()}
            if not (request.sequential and blocks) or any(id(p) not in inside for p in targets.values()):
                raise ConfigError("a model on disk is calibrated block by block: use a sequential method (wanda, "
                                  "sparsegpt), every target inside the chain of blocks (its decoder layers)")
        with onloaded(model, blocks, onto, disk) as where:
            if not request.sequential:
                with passing(blocks, device, where, disk):
                    for i in range(len(request.passes)):
                        yield Group(tuple(targets), ctx.full(model, targets, i, chunks, device), i)
                return
            if not blocks:
                with passing(blocks, device, where, disk):
                    yield from ctx.each(model, targets, chunks, device)
                return
            inside = {id(p) for b in blocks for p in b.parameters()}
            order = {id(p): i for i, p in enumerate(model.parameters())}
            start = min((order[id(p)] for p in blocks[0].parameters()), default=0)
            before = {n: p for n, p in targets.items() if id(p) not in inside and order.get(id(p), 0) < start}
            after = {n: p for n, p in targets.items() if id(p) not in inside and n not in before}
            names = {id(m): n for n, m in model.named_modules()}
            with passing(blocks, device, where, disk):
                yield from ctx.each(model, before, chunks, device)
                cached = catch(model, blocks[0], chunks, device, where, opts.cache_dtype)
            for b, block in enumerate(blocks):
                with on_device(block, device, where, disk):
                    mine = {n: p for n, p in targets.items() if any(p is q for q in block.parameters())}
                    for i in range(len(request.passes) if mine else 0):
                        yield Group(tuple(mine), ctx.block(block, mine, i, cached, device), i, names.get(id(block)),
                                    (b + 1, len(blocks)))
                    with hooked(block, {}):  # the next block's inputs, from this block as the Pruner left it
                        for j, (args, kwargs) in enumerate(cached):
                            a, k = load((args, kwargs), device)
                            out = first(_replay(block, a, k, names.get(id(block))))
                            cached[j] = store(((out,) + tuple(args[1:]), kwargs), where,
                                              opts.cache_dtype)
            del cached
            with passing(blocks, device, where, disk):
                yield from ctx.each(model, after, chunks, device)


def check_named_blocks(model: nn.Module, targets: Mapping[str, Tensor], globs, x, sequential: bool = True) -> None:
    """ConfigError, before anything runs for long or is written, when the ``sequential_targets`` globs match no
    module or (for a ``sequential`` request, which runs them one after the other) the blocks they name are not a
    chain on the example inputs ``x``."""
    blocks, _ = find_blocks(model, targets, tuple(globs))
    if not sequential:
        return
    with calibrating(model):
        if not _chained_onloaded(model, blocks, x, None):
            raise ConfigError("the blocks sequential_targets names are not a chain: a block's output is not the "
                              "next block's input")


def _chained_onloaded(model: nn.Module, blocks: list[nn.Module], x, device: torch.device | None,
                      disk=None) -> bool:
    """:func:`chained` on one batch, with the model onloaded to ``device`` as the pipeline will run it."""
    with onloaded(model, blocks, device, disk) as where, passing(blocks, device or home(model), where, disk):
        return chained(model, blocks, to(x, device or home(model)))


@dataclass
class _Run:
    passes: tuple[frozenset[str], ...]
    precision: str
    world: int

    def _finish(self, mods, stats) -> dict[str, InputStats]:
        reduce(stats, self.world)
        check_reached(mods, stats)
        return stats

    def full(self, model: nn.Module, targets: Mapping[str, Tensor], i: int, chunks: list[Chunk],
             device: torch.device) -> dict[str, InputStats]:
        """Statistics of pass ``i`` over ``targets`` from full forward passes of ``model``."""
        kinds = self.passes[i] - {"influence", "routing"}
        mods = owners(model, targets) if kinds else {}
        hooks, stats = stat_hooks(mods, kinds, self.precision)
        if "routing" in self.passes[i]:  # per experts module, keyed by its name
            experts = {n: m for n, m in model.named_modules() if type(m).__name__.endswith("Experts")
                       and isinstance(getattr(m, "gate_up_proj", None), Tensor)}
            if not experts:
                raise ConfigError("expert routing needs fused experts modules, and this model has none")
            hooks.update(routing_hooks(experts, stats))
        if "influence" in self.passes[i]:  # per block, not per target: keyed by the block's module name
            names = {id(m): n for n, m in model.named_modules()}
            blocks = {names[id(b)]: b for b in find_blocks(model, targets, None)[0]}
            if not blocks:
                raise ConfigError("block influence needs a chain of blocks, and none was found in this model")
            hooks.update(influence_hooks(blocks, stats))
        with hooked(model, hooks):
            for x, _ in chunks:
                run_model(model, to(x, device))
        return self._finish(mods, stats)

    def each(self, model, targets, chunks, device) -> Iterator[Group]:
        """One target at a time, each pass of it measured after the Pruner wrote the one before."""
        for name, p in targets.items():
            for i in range(len(self.passes)):
                yield Group((name,), self.full(model, {name: p}, i, chunks, device), i)

    def block(self, block: nn.Module, targets: Mapping[str, Tensor], i: int, cached: list[Call],
              device: torch.device) -> dict[str, InputStats]:
        """Statistics of pass ``i`` over a block's ``targets``, the block run alone on its cached inputs."""
        mods = owners(block, targets)
        hooks, stats = stat_hooks(mods, self.passes[i], self.precision)
        with hooked(block, hooks):
            for call in cached:
                a, k = load(call, device)
                _replay(block, a, k, "a block")
        return self._finish(mods, stats)


def _replay(block: nn.Module, args: tuple, kwargs: dict, name: str | None):
    """``block`` called alone on a cached call; what it raises is one sentence saying how to avoid the replay."""
    try:
        return block(*args, **kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError, KeyError) as exc:
        # KeyError: Zamba2's shared block looks its caller's layer index up in a table the replay does not fill
        raise ConfigError(f"{name or 'a block'} cannot run alone on the inputs the model gave it "
                          f"({type(exc).__name__}: {first_line(exc)}): name "
                          "other blocks with sequential_targets, or calibrate with sequential: false") from None

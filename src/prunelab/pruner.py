"""Pruner: the seam between the engine and any training loop.

    pruner = prunelab.Pruner(model, method="magnitude", schedule="iterative", sparsity=0.9)
    ...
    loss.backward(); optimizer.step(); pruner.step(optimizer)

``step(optimizer)`` counts optimizer steps, prunes when the schedule says so, and enforces the masks: pruned
weights are set to exactly zero and so is their optimizer state (SGD momentum, Adam/AdamW moments), so
weight decay and momentum cannot bring them back. The model is never rewritten: parameter names and
``state_dict`` keys stay the user's own. ``after_backward()`` (optional) zeroes pruned gradients, which also
feeds gradient-based criteria; ``calibrate(batches)`` hands calibration inputs to methods that need them
(``pruner.needs`` says what the method needs before each event).

A pruning event runs: the method's ``before_prune`` (per-event data, added to the Context) -> its ``decide``
or the pipeline criterion -> granularity -> allocation -> selector -> the new masks installed and pruned
weights zeroed -> the method's ``after_prune`` (a record, and weight values the Pruner sets).
"""
from __future__ import annotations

from dataclasses import replace
import time
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from .engine.allocation import Uniform
from . import calibration
from .calibration.reach import reachable
from .engine.decisions import as_decision, check_shifts, merge, set_values, versions, write
from .engine.granularity import Filter
from .engine.criteria import Context, Needs
from .inputs import Inputs
from .limits import MAX_SEED
from .errors import CheckpointError, ConfigError
from .masks import (Masks, as_keep_mask, keep_multiplier, keep_only, keep_with_state, local, local_mask,
                    mask_device, zero_pruned)
from .methods import Method, build_method
from .methods.base import PruneView
from .registry import check_fraction
from .engine.schedules import build_schedule
from .engine.streaming import can_stream, streamed_masks
from .structure import Units, structure_for
from .targets import Targets, accounting, build_targets, check_current, check_finite, check_values
from .engine.topk import all_true
from .engine.loop import Selection, select_tensors


class Pruner:
    """Prunes ``model`` with a method under a schedule, and keeps the masks enforced.

    Args:
        model: any ``nn.Module``.
        method: a method name (``"magnitude"``, ``"random"``, ...), a mapping with ``name`` and part
            overrides, or a Method instance.
        schedule: ``"oneshot"``, ``"iterative"``, ``"cubic"``, a mapping with its parameters, or an instance.
            Steps are counted in calls to :meth:`step`; step 0 events run at construction.
        sparsity: the final sparsity over the prunable weights, in [0, 1). Required unless the schedule
            instance carries it or the granularity fixes it (N:M).
        targets: which parameters are prunable (see :class:`~prunelab.targets.Targets`).
        seed: seed of every stochastic decision (random scores, stochastic selectors).
        example_inputs: a batch of model inputs; needed by channel methods (``l1_filter``, ``slimming``, any
            method with ``channels: true``) to trace which channels are coupled.
        auto_prune: True (default): events happen at the schedule's steps, counted by :meth:`step`. False:
            the schedule only plans the events (their targets, their number, which one is final) and the
            caller triggers each with :meth:`prune_event`, e.g. a runner whose rounds are separate stages.
    """

    def __init__(self, model: nn.Module, method: Any = "magnitude", schedule: Any = "oneshot",
                 sparsity: float | None = None, targets: Targets | dict | None = None, seed: int = 0,
                 example_inputs: Inputs | None = None, auto_prune: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Pruner needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.method: Method = build_method(method)
        check_values(model, self.method.requirements().calibration)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
        gran = self.method.granularity_
        self.schedule = build_schedule(schedule, sparsity, gran.fixed_density)
        self.seed = int(seed)
        spec = build_targets(targets if targets is not None else self.method.default_targets)
        # {name: parameter}, how each maps to (out, in, *kernel), and the weights left out with the reason
        self.params, self.layouts, self.skipped = spec.for_method(model, gran, self.method)
        if example_inputs is not None and self.method.requirements().calibration is not None and spec.include == ["*"]:
            self.params, self.skipped = reachable(model, self.params, self.skipped, example_inputs, self.method.name)
        self.masks = Masks.dense(self.params)
        #: the units of structure a channel method chooses from (:class:`prunelab.structure.Units`), else None
        self.structure: Units | None = None
        if self.method.channels:
            if example_inputs is None:
                raise ConfigError(f"method {self.method.name} removes whole channels: give the Pruner "
                                  "example_inputs (a batch of model inputs) so channel coupling can be traced")
            self.structure = structure_for(model, self.params, self.method, example_inputs)
        self._companions: dict[str, tuple[nn.Parameter, Tensor]] = {}
        self.step_count, self.events, self.history, self.auto_prune = 0, 0, [], bool(auto_prune)
        self._mul: list[tuple[nn.Parameter, Tensor, Tensor]] | None = []
        self._dense: set[str] = set(self.params)  # names whose masks are all alive
        # the calibration inputs (read once by calibrate()), their options, and where progress lines go
        self._chunks, self._options, self._progress = None, calibration.Options(), None
        request = self.needs.calibration
        if request is not None and request.sequential and type(self.method).decide is Method.decide \
                and not isinstance(self.method.allocation_, Uniform):
            raise ConfigError(f"sequential calibration decides each block on its own, but allocation "
                              f"{self.method.allocation_.registered_name} shares one budget across layers: use "
                              "allocation uniform, or sequential: false")
        if request is not None and self.auto_prune and self.schedule.target(0) is not None:
            raise ConfigError(f"method {self.method.name} needs calibration data before its first pruning event, "
                              "which this schedule puts at construction (step 0): in a recipe use schedule oneshot "
                              "or iterative (or a later start_epoch); in your own loop build the Pruner with "
                              "schedule='manual', call pruner.calibrate(batches), then pruner.prune(sparsity)")
        self._maybe_prune(None)

    @property
    def channels(self) -> Units | None:
        """Read-only alias of :attr:`structure` (its name before unit kinds other than channels), kept one release."""
        return self.structure

    @property
    def planned_events(self) -> int | None:
        """How many pruning events the schedule plans (None for a manual schedule)."""
        return len(self.schedule.events()) or None

    @property
    def needs(self) -> Needs:
        """What the method needs handed over before each event: gradient batches, calibration samples."""
        return self.method.requirements()

    def calibrate(self, batches: Iterable, samples: int | None = None, *, options: calibration.Options | None = None,
                  device: Any = None, cache_dtype: Any = None, precision: str = "float32",
                  sequential_targets: Any = None, distributed: bool | None = None,
                  progress: Callable[[str], None] | None = None, targets: bool | None = None,
                  offload: Any = None) -> None:
        """Hand over calibration data for the following pruning events of a method that needs it (``pca``,
        ``wanda``, ``sparsegpt``; others ignore it): an iterable of model inputs (a tensor, a tuple of
        positional inputs, a dict of keyword inputs) or of ``(inputs, targets)`` pairs, read here once, so a
        generator works. ``targets``: whether a pair is (inputs, targets) (default: as the loader's
        ``yields_targets`` says, else as the model's forward leaves no doubt, else one sentence asking).

        ``samples``: how many inputs (default: the method's own count). ``device``: where blocks compute, the
        model staying where it is (e.g. on the CPU) and each block moved there while it runs.
        ``cache_dtype``: cached block inputs on the host in float16 / bfloat16. ``precision``: norms, Gram
        matrices and SparseGPT's solve in float32 (default, as the authors' code) or float64.
        ``sequential_targets``: globs naming the blocks (default: ``_no_split_modules``, else found).
        ``distributed``: under torchrun each rank takes its share of the samples and the statistics are summed
        across ranks (default whenever torch.distributed is initialised; False: every rank all samples).
        ``progress``: called with one line per block decided (a long calibration says where it is).
        ``offload``: the DiskWeights of a model opened by :func:`prunelab.calibration.disk.open_on_disk`.
        ``options``: all of these at once, as one :class:`prunelab.calibration.Options` (a recipe's
        ``prune.calibration`` makes one), instead of the separate keywords.
        """
        opts = calibration.options(samples, device, cache_dtype, precision, sequential_targets, distributed, options,
                                   offload)
        request = self.needs.calibration
        self._chunks = calibration.materialise(batches, opts.resolve_samples(request), targets,
                                               self.model.forward) if request else None
        self._options, self._progress = opts, progress

    # -- the training-loop API ------------------------------------------------------------------
    def after_backward(self) -> None:
        """Zero the gradients of pruned weights; feed gradient-based criteria. Call after ``backward()``."""
        if self._mul is None:
            self.enforce()
        for p, _, keep in self._mul:
            if p.grad is not None:
                keep_only(local(p.grad), keep)
        crit = self.method.criterion_
        if crit.needs_gradients and not (self.auto_prune and self.schedule.frozen(self.step_count)):
            crit.observe(self.params)

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Call after each ``optimizer.step()``: enforce masks, count the step, prune when scheduled.

        Returns True when this call pruned.
        """
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"pruner.step takes the optimizer (or nothing), got {type(optimizer).__name__}; "
                              "the pruner counts steps itself")
        self.enforce(optimizer)
        self.step_count += 1
        return self._maybe_prune(optimizer)

    def prune(self, sparsity: float, optimizer: torch.optim.Optimizer | None = None,
              final: bool | None = None) -> Masks:
        """Prune now to ``sparsity`` over the prunable weights (outside the schedule); returns the masks.

        ``final`` marks the event that must reach the target exactly (stochastic selectors clean up then);
        by default it is the event whose sparsity is the schedule's final sparsity.
        """
        sparsity = check_fraction("sparsity", sparsity)
        if final is None:
            final = abs(sparsity - self.schedule.sparsity) < 1e-12
        return self._prune(sparsity, optimizer, final)

    def prune_event(self, index: int, optimizer: torch.optim.Optimizer | None = None) -> Masks:
        """Prune now to the target of the schedule's event ``index`` (0-based); the last event is final."""
        events = self.schedule.events()
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(events):
            raise ConfigError(f"the schedule plans {len(events)} pruning events; there is no event {index}")
        return self._prune(events[index][1], optimizer, index == len(events) - 1)

    def _prune(self, sparsity: float, optimizer: torch.optim.Optimizer | None, final: bool) -> Masks:
        check_current(self.model, self.params)
        m, request = self.method, self.needs.calibration
        if request is not None or type(m).decide is not Method.decide:  # the pipeline checks its own pass
            check_finite(self.params)
        ctx = Context(seed=self.seed, event=self.events, sparsity=sparsity, final_sparsity=self.schedule.sparsity,
                      final=final, total_events=self.planned_events, layouts=self.layouts,
                      calibration_samples=self._options.resolve_samples(request) if request else None)
        ctx = replace(ctx, **m.before_prune(self._view(), ctx))
        masks, decided_record, custom = self._decide_event(ctx, request)
        old, self.masks = self.masks, Masks({n: masks[n].to(mask_device(p)) for n, p in self.params.items()})
        self._refresh()
        self._zero_pruned(optimizer)
        m.criterion_.reset()
        self.events += 1
        record = {"step": self.step_count, "target_sparsity": None if custom else sparsity,
                  "sparsity": self.masks.sparsity(), **decided_record}
        outcome = m.after_prune(self._view(), old, self.masks, ctx)
        set_values(self.params, outcome.values)
        record.update(outcome.record)
        self.history.append(record)
        return self.masks

    def _decide_event(self, ctx: Context, request) -> tuple[dict[str, Tensor], dict, bool]:
        """(masks, record, whether the method decided itself) of one event; a calibrated one group by group of
        the calibration pipeline, each group's decision written before the next group is measured."""
        named = dict(self.model.named_parameters())
        if request is None:
            d, custom = self._decide(ctx, tuple(self.params), named)
            if d.values or d.shifts:
                write(self.params, d, named=named)
            return d.masks, d.record, custom
        if self._chunks is None:
            raise ConfigError(f"method {self.method.name} needs calibration data: call pruner.calibrate(batches) "
                              "with a few batches of model inputs before pruning")
        decided: dict[str, Tensor] = {}
        record: dict = {}
        custom = False
        companions = None
        if self.structure is not None:
            companions = lambda new: self.structure.companion_masks({**self.masks, **decided, **new})  # noqa: E731
        t0 = time.perf_counter()
        for group in calibration.groups(self.model, self.params, request, self._chunks, self._options):
            gctx = replace(ctx, input_stats=group.stats, group=group.names, calibration_pass=group.index,
                           decided=dict(decided))
            d, custom = self._decide(gctx, group.names, named)
            write(self.params, d, companions, named)
            decided.update(d.masks)
            merge(record, d.record)
            if self._progress is not None and group.of and group.index == len(request.passes) - 1:
                self._progress(f"calibrated and pruned {group.block} ({group.of[0]}/{group.of[1]}, "
                               f"{time.perf_counter() - t0:.0f} s)")
            del group, gctx, d  # a block's statistics and new weights go before the next block's are made
        record["calibration_samples"] = sum(n for _, n in self._chunks)
        return decided, record, custom

    def _decide(self, ctx: Context, names: tuple[str, ...], named: dict[str, nn.Parameter]):
        """(the checked Decision for ``names``, its shifts on any of ``named``; whether the method decided it)."""
        before = versions(self.params)
        out = self.method.decide(self._view(), ctx)
        if versions(self.params) != before:
            raise ConfigError(f"method {self.method.name} wrote the model's weights while deciding: a method "
                              "returns new weights in its Decision and the Pruner writes them")
        custom = out is not None
        out = as_decision(self.method.name, out if custom else self._pipeline(ctx.sparsity, ctx, names), names,
                          self.params, named)
        out.shifts.update(check_shifts(self.method.name, self.method.shifts(self._view(), ctx, out.masks), named))
        return out, custom

    def _view(self) -> PruneView:
        return PruneView(self.model, self.params, self.masks, self.structure, self.layouts)

    def _pipeline(self, sparsity: float, ctx: Context, names: tuple[str, ...]) -> Masks:
        """criterion -> granularity -> allocation -> selector over targets ``names``, one pass per granularity step."""
        m = self.method
        params = self.params if len(names) == len(self.params) else {n: self.params[n] for n in names}
        if params is not self.params and self.structure is not None:
            raise ConfigError(f"method {m.name} couples channels across layers: it cannot be decided block by "
                              "block (sequential: false)")
        if type(m.allocation_) is Uniform and len(params) > 1 and self.structure is None:  # one layer's scores
            return Masks({n: self._pipeline(sparsity, ctx, (n,))[n] for n in params})  # at a time: same masks
        masks, dense = Masks({n: self.masks[n] for n in params}), self._dense & set(params)
        steps = m.granularity_.steps(sparsity, self.schedule.sparsity)
        if can_stream(m, steps, params, self.layouts):  # the same masks, without a copy of the weights
            new = streamed_masks(m.criterion_, params, masks, dense, steps[0][1], m.allocation_.floor)
            if new is not None:
                return Masks(new)
        check_finite(params)  # (a streamed pass checks its slices itself)
        scores = m.criterion_.scores(params, ctx)
        for i, (gran, s, s_final) in enumerate(steps):
            last = i == len(steps) - 1
            step_scores = scores if last else {n: t.clone() for n, t in scores.items()}
            masks = Masks(self._select(gran, s, s_final, step_scores, masks, dense, ctx, params))
            dense = {n for n, t in masks.items() if all_true(t)} if not last else dense
        return masks

    def _select(self, gran, sparsity: float, final_sparsity: float, scores: dict, masks: Masks, dense: set,
                ctx: Context, params: dict[str, nn.Parameter]) -> dict[str, Tensor]:
        """One pass of granularity -> allocation -> selector over every tensor; returns the new masks.

        Output channels of a channel method are chosen by its units of structure (:class:`prunelab.structure.Units`).
        """
        how = Selection(self.method.allocation_, self.method.selector_, sparsity, final_sparsity, ctx)
        if self.structure is not None and isinstance(gran, Filter):  # traced channels or transformer units
            new = self.structure.select(self.params, self.layouts, gran, scores, masks, how)
            return {n: new.get(n, masks[n]) for n in self.params}
        return select_tensors(gran, params, self.layouts, scores, masks, dense, how)

    def enforce(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Set pruned weights, and their optimizer state, to exactly zero (the per-step hot path).

        On the CPU in float32/64 a product with a mask in the parameter's dtype is 5-13x faster than
        ``torch.where`` (512x512 and 4096x4096, one thread), so these multipliers are built once per mask change.
        A product cannot zero a NaN, and in float16 / bfloat16 Adam makes one at every pruned weight (its eps
        underflows: 0 / 0), so there, and on accelerators (memory-bound either way), pruned values are *set* to
        zero. In float32 a NaN reaches a pruned weight only from a NaN gradient: divergence, which the trainer
        reports.
        """
        if self._mul is None:  # local parts, found once: a sharded parameter's shard and its rows of the mask
            pairs = [(self.params[n], self.masks[n]) for n in self.masks if n not in self._dense]
            self._mul = [(p, local(p), keep_multiplier(local(p), local_mask(p, m)))
                         for p, m in pairs + list(self._companions.values())]
        with torch.no_grad():
            for p, part, keep in self._mul:
                keep_with_state(p, part, keep, optimizer, keep_only)

    def _zero_pruned(self, optimizer: torch.optim.Optimizer | None) -> None:
        """One-off zeroing after a mask change, with boolean masks (no multiplier memory needed)."""
        pairs = [(self.params[n], m) for n, m in self.masks.items() if n not in self._dense]
        with torch.no_grad():
            for p, m in pairs + list(self._companions.values()):
                if not p.is_meta:  # on disk: written pruned, block by block, by the calibration pipeline
                    keep_with_state(p, local(p), local_mask(p, m), optimizer, zero_pruned)

    def set_masks(self, masks: Masks, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Install masks (e.g. from a checkpoint); names and shapes must match the prunable parameters."""
        if list(masks) != list(self.params):
            raise ConfigError("the masks name other parameters than this pruner's targets")
        self.masks = Masks({n: as_keep_mask(n, masks[n], p.shape).to(p.device) for n, p in self.params.items()})
        self._refresh()
        self._zero_pruned(optimizer)

    # -- reporting and state --------------------------------------------------------------------
    def summary(self) -> dict:
        """Method, step, sparsity/density/compression over the prunable weights, per-layer rows, and the same
        over every weight matrix of the model (``all_weights``), with the matrices that are not pruned listed
        (``untargeted``; ``skipped`` when the granularity could not apply to them)."""
        return {"method": self.method.describe(), "step": self.step_count, "events": self.events,
                "prunable_params": self.masks.numel(), "nonzero_prunable": self.masks.nonzero(),
                "sparsity": self.masks.sparsity(), "density": self.masks.density(),
                "compression_prunable": self.masks.compression_ratio(),
                "layers": self.masks.layer_stats(self.layouts), **self.accounting()}

    def accounting(self) -> dict:
        """:func:`prunelab.targets.accounting` of the current masks, plus ``skipped``: the targets the
        granularity could not apply to, with the reason."""
        out = {**accounting(self.model, self.masks), "skipped": dict(self.skipped)}
        if self.structure is not None:
            out["channels"] = self.structure.report(self.params, self.masks)
        return out

    def state(self) -> dict:
        """Counters to store beside the masks in a checkpoint (JSON-serialisable)."""
        return {"step_count": self.step_count, "events": self.events, "history": self.history}

    def load_state(self, state: dict, masks: Masks, optimizer: torch.optim.Optimizer | None = None,
                   method_state: dict[str, Tensor] | None = None) -> None:
        """Continue from a checkpoint: counters from :meth:`state`, the masks, and the method's state tensors
        (``method.state_tensors()``; a method that keeps none refuses a non-empty one)."""
        try:
            self.step_count = int(state["step_count"])
            self.events = int(state["events"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("the checkpoint's pruner state lacks its step and event counters") from None
        self.history = list(state.get("history", []))
        self.set_masks(masks, optimizer)
        self.method.load_state_tensors(dict(method_state or {}))

    def rebind(self) -> None:
        """Read the targets' parameters again, by name, after something replaced them in the model (FSDP2's
        ``fully_shard`` swaps in sharded ones): masks, counters and the method's state stay as they are."""
        named = dict(self.model.named_parameters())
        self.params = {n: named[n] for n in self.params}
        self._refresh()

    # -- internals ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        self._dense = {n for n, m in self.masks.items() if all_true(m)}
        if self.structure is not None:
            named = dict(self.model.named_parameters())
            self._companions = {n: (named[n], keep) for n, keep in self.structure.companion_masks(self.masks).items()}
        self._mul = None  # rebuilt lazily by enforce()

    def _maybe_prune(self, optimizer) -> bool:
        if not self.auto_prune:
            return False
        target = self.schedule.target(self.step_count)
        if target is None:
            return False
        self.prune(target, optimizer)
        return True


"""The Method base class, its declared hooks, the narrow view the hooks see, and the method registry.

A method is criterion -> granularity -> allocation -> selector plus hooks. The hooks receive a
:class:`PruneView` (model, targets, masks, channel graph) and the event's :class:`~prunelab.criteria.Context`,
never the Pruner, and they return data: per-event inputs for the parts, an event record, weight values to
set. The Pruner is the only one that installs masks and writes weights.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Mapping

import torch
from torch import Tensor, nn

from ..allocation import ALLOCATIONS, Allocation
from ..criteria import CRITERIA, Criterion, Needs
from ..errors import CheckpointError
from ..granularity import GRANULARITIES, Granularity
from ..registry import Registry
from ..selection import SELECTORS, Selector

if TYPE_CHECKING:
    from ..channels import ChannelGraph
    from ..criteria import Context
    from ..masks import Masks
    from ..targets import Layout


@dataclass(frozen=True)
class PruneView:
    """What a method's hooks may see of the pruning state: the model, its targets, the masks in force before
    this event, the traced channel coupling (None unless the method removes channels) and each target's layout
    (:meth:`canonical` gives the (out, in, *kernel) view granularities use)."""

    model: nn.Module
    params: Mapping[str, nn.Parameter]
    masks: "Masks"
    channels: "ChannelGraph | None" = None
    layouts: Mapping[str, "Layout"] = field(default_factory=dict)

    def scratch(self, commit: bool = False):
        """A context manager yielding ``write(name, value)``: within the block a target reads ``value``; every
        written target is restored on exit (a method measures a decision layer by layer, the Pruner installs it).
        ``commit=True``: what was written stays when the block ends normally (restored only on an exception),
        so a method whose written values are its decision need not hold a second copy of them."""
        return _scratch(self.params, commit)

    def canonical(self, name: str, t: Tensor) -> Tensor:
        """``t`` (the weight ``name``, its scores or its mask) viewed as (out, in, *kernel)."""
        layout = self.layouts.get(name)
        return layout.canonical(t) if layout is not None else t

    @contextmanager
    def silenced(self, masks: Mapping[str, Tensor]) -> Iterator[None]:
        """Within the block, the weights ``masks`` prune (and their channels' biases and norm entries) read as
        zero; every value is restored on exit, so a method can measure a candidate decision without writing
        the model."""
        named = {**dict(self.model.named_parameters()), **self.params}
        keeps = dict(masks)
        if self.channels is not None:
            keeps.update(self.channels.companion_masks(masks))
        with _scratch(named) as write:
            for name, keep in keeps.items():
                p = named[name]
                write(name, p.detach() * keep.to(device=p.device, dtype=p.dtype))
            yield


@contextmanager
def _scratch(params: Mapping[str, nn.Parameter], commit: bool = False) -> Iterator:
    """Yields ``write(name, value)``; every parameter written within the block gets its value back on exit
    (with ``commit``, only when the block raises)."""
    saved: dict[str, Tensor] = {}

    def write(name: str, value: Tensor) -> None:
        p = params[name]
        with torch.no_grad():
            if name not in saved:
                saved[name] = p.detach().clone()
            p.copy_(value.to(device=p.device, dtype=p.dtype))
    ok = False
    try:
        yield write
        ok = True
    finally:
        if not (commit and ok):
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)


@dataclass
class Outcome:
    """What a method's ``after_prune`` hands back: ``record`` joins the event's entry in ``pruner.history``;
    ``values`` are weights to set, ``{name: (where, value)}`` with a bool mask and a full-shape tensor (e.g.
    DropPruning's revived weights restarting at their pruned value). The Pruner applies them."""

    record: dict = field(default_factory=dict)
    values: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rewind:
    """What the surviving weights become after a pruning round, before retraining (lottery-style methods):
    ``to="init"`` the run's initial weights, ``"step"`` the weights after ``step`` optimizer steps of dense
    training, ``"reinit"`` a fresh random draw."""

    to: Literal["init", "step", "reinit"]
    step: int = 0


@dataclass
class Method:
    """criterion -> granularity -> allocation -> selector, plus declared hooks a method may override.

    Declared before an event: :meth:`needs` (gradients, calibration inputs), :meth:`before_prune` (per-event
    data for the parts, as :class:`Context` fields). Instead of the pipeline: :meth:`decide` (the one escape
    hatch, for decisions that are not a ranking under a count). After an event: :meth:`after_prune` (a record
    and weight values), :meth:`rewind_point` (what runners do with the survivors after a round).

    ``channels=True`` makes the pruner trace channel coupling (:mod:`prunelab.channels`; the Pruner then
    needs ``example_inputs``) and hold the bias and BatchNorm entries of removed channels at zero, so the
    masked model equals its shrunk version (:func:`prunelab.export.shrink`).
    """

    criterion: Any = "magnitude"
    granularity: Any = "element"
    allocation: Any = "uniform"
    selector: Any = "topk"
    channels: bool = False  # also hold removed channels' biases and BatchNorm scale/shift at zero (shrinkable)
    # a one-shot method decides from calibration data in one event; `prunelab curve` runs it without rounds
    one_shot: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.criterion_: Criterion = CRITERIA.build(self.criterion)
        self.granularity_: Granularity = GRANULARITIES.build(self.granularity)
        self.allocation_: Allocation = ALLOCATIONS.build(self.allocation)
        self.selector_: Selector = SELECTORS.build(self.selector)

    @property
    def default_targets(self) -> dict | None:
        """Targets options a method wants when the user gives none (e.g. keep the first layer dense)."""
        return None

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    # -- declared hooks -------------------------------------------------------------------------------
    def needs(self) -> Needs:
        """What must be handed over before each pruning event; default: what the criterion needs."""
        return self.criterion_.needs()

    def rewind_point(self) -> Rewind | None:
        """What runners set the surviving weights to after each round (None: keep training from them)."""
        return None

    def before_prune(self, view: PruneView, ctx: "Context") -> dict[str, Any]:
        """Per-event data for the parts, returned as Context fields (e.g. ``{"bn_scales": ...}``)."""
        return {}

    def decide(self, view: PruneView, ctx: "Context") -> dict[str, Tensor] | None:
        """Masks decided by the method itself ({name: bool tensor}), or None to run the pipeline.

        The one escape hatch from criterion -> granularity -> allocation -> selector, for decisions that are
        not a ranking under a count (PCA's spectrum cut per layer and cumulative sum per unit); such a
        method's event sparsity is an outcome, and the requested one is ignored.
        """
        return None

    def after_prune(self, view: PruneView, old: "Masks", new: "Masks", ctx: "Context") -> Outcome:
        """Called once the new masks are installed and pruned weights zeroed; ``view.masks`` is ``new``."""
        return Outcome()

    # -- state carried between events -------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Tensors the method carries from one pruning event to the next (e.g. which weights DropPruning has
        revived, and the values they had when pruned). Saved with each checkpoint and given back by
        :meth:`load_state_tensors`, so a run whose rounds are separate stages (or resume) continues the same
        process. Default: none."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if tensors:
            raise CheckpointError(f"the checkpoint holds method state ({', '.join(sorted(tensors)[:2])}) that "
                                  f"method {self.name!r} does not keep")

    def describe(self) -> str:
        def n(spec: Any) -> str:
            return spec if isinstance(spec, str) else (spec.get("name") if isinstance(spec, dict) else type(spec).__name__)
        return (f"{self.name} (criterion={n(self.criterion)}, granularity={n(self.granularity)}, "
                f"allocation={n(self.allocation)}, selector={n(self.selector)})")


METHODS: Registry[Method] = Registry("method", Method)


def build_method(spec: Any) -> Method:
    """A Method from a name, a mapping with ``name`` and part overrides, or an instance."""
    return METHODS.build(spec)

"""The Method base class, its declared hooks, the narrow view the hooks see, and the method registry.

A method is criterion -> granularity -> allocation -> selector plus hooks. The hooks receive a
:class:`PruneView` (model, targets, masks, channel graph) and the event's :class:`~prunelab.engine.criteria.Context`,
never the Pruner, and they return data: per-event inputs for the parts, an event record, weight values to
set. The Pruner is the only one that installs masks and writes weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping

from torch import Tensor, nn

from ..engine.allocation import ALLOCATIONS, Allocation
from ..engine.decisions import Decision, Outcome  # noqa: F401  (re-exported: methods return them)
from ..engine.criteria import CRITERIA, Criterion, Needs
from ..errors import CheckpointError
from ..engine.granularity import GRANULARITIES, Granularity
from ..registry import Registry
from ..engine.selection import SELECTORS, Selector

if TYPE_CHECKING:
    from ..structure import Units
    from ..engine.criteria import Context
    from ..masks import Masks
    from ..targets import Layout


@dataclass(frozen=True)
class PruneView:
    """What a method's hooks may see of the pruning state: the model, its targets, the masks in force before
    this event, the units of structure (:class:`prunelab.structure.Units`; None unless the method removes
    channels) and each target's layout
    (:meth:`canonical` gives the (out, in, *kernel) view granularities use)."""

    model: nn.Module
    params: Mapping[str, nn.Parameter]
    masks: "Masks"
    structure: "Units | None" = None
    layouts: Mapping[str, "Layout"] = field(default_factory=dict)

    @property
    def channels(self) -> "Units | None":
        """Read-only alias of :attr:`structure`, kept one release."""
        return self.structure

    def canonical(self, name: str, t: Tensor) -> Tensor:
        """``t`` (the weight ``name``, its scores or its mask) viewed as (out, in, *kernel)."""
        layout = self.layouts.get(name)
        return layout.canonical(t) if layout is not None else t


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

    ``channels=True`` makes the pruner trace channel coupling (:mod:`prunelab.structure.channels`; the Pruner then
    needs ``example_inputs``) and hold the bias and BatchNorm entries of removed channels at zero, so the
    masked model equals its shrunk version (:func:`prunelab.structure.surgery`).
    """

    criterion: Any = "magnitude"
    granularity: Any = "element"
    allocation: Any = "uniform"
    selector: Any = "topk"
    channels: bool = False  # also hold removed channels' biases and BatchNorm scale/shift at zero (shrinkable)
    # a one-shot method decides from calibration data in one event; `prunelab curve` runs it without rounds
    one_shot: ClassVar[bool] = False
    # whether a language model's output layer is a target by default (targets.output_layer overrides it)
    output_layer: ClassVar[bool] = True

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

    def requirements(self) -> Needs:
        """Everything to hand over before each event: :meth:`needs` joined with the selector's (what the Pruner
        asks for; override :meth:`needs`, not this)."""
        return self.needs().join(self.selector_.needs())

    def rewind_point(self) -> Rewind | None:
        """What runners set the surviving weights to after each round (None: keep training from them)."""
        return None

    def before_prune(self, view: PruneView, ctx: "Context") -> dict[str, Any]:
        """Per-event data for the parts, returned as Context fields (e.g. ``{"bn_scales": ...}``)."""
        return {}

    def decide(self, view: PruneView, ctx: "Context") -> "Decision | dict[str, Tensor] | None":
        """The masks (and new weights) of the targets ``ctx.group`` decided by the method itself, or None to run
        the pipeline.

        The one escape hatch from criterion -> granularity -> allocation -> selector, for decisions that are
        not a ranking under a count (PCA's spectrum cut per layer, SparseGPT's masks and weights decided
        together). A calibrated method is asked once per group and pass of its request, with the group's
        statistics on ``ctx.input_stats``; it returns data and keeps none (the Pruner checks that it wrote no
        weight). Such a method's event sparsity is an outcome when it says so.

        The default runs the pipeline (None), except under an N:M granularity with ``permute``, whose channel
        moves are weight values (:func:`prunelab.methods.permuted.permuted_decision`).
        """
        if getattr(self.granularity_, "permute", "none") != "none":
            from .permuted import permuted_decision  # a sibling that builds on this module
            return permuted_decision(self, view, ctx)
        return None

    def shifts(self, view: PruneView, ctx: "Context", masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Amounts to add to parameters that are not targets along with the decided ``masks`` (``view.masks``
        the masks before them; ``ctx`` the group's, with its statistics), computed before anything is written:
        FLAP's bias compensation (:mod:`prunelab.structure.bias`). Default: none."""
        return {}

    def after_prune(self, view: PruneView, old: "Masks", new: "Masks", ctx: "Context") -> Outcome:
        """Called once the new masks are installed and pruned weights zeroed; ``view.masks`` is ``new``
        (``ctx`` is the event's, without any group's statistics)."""
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

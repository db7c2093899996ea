"""The Method base class and its registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..allocation import ALLOCATIONS, Allocation
from ..criteria import CRITERIA, Criterion
from ..errors import CheckpointError
from ..granularity import GRANULARITIES, Granularity
from ..registry import Registry
from ..selection import SELECTORS, Selector

if TYPE_CHECKING:
    from torch import Tensor

    from ..criteria import Context
    from ..masks import Masks
    from ..pruner import Pruner


@dataclass
class Method:
    """criterion -> granularity -> allocation -> selector, plus hooks a method may override.

    Hooks: ``before_prune(pruner, ctx)`` runs before scores are computed; ``after_prune(pruner, old, new)``
    after the new masks are installed and pruned weights zeroed (e.g. to restore revived weights); the dict
    it returns is added to the pruning event's record in ``pruner.history``.

    ``channels=True`` makes the pruner trace channel coupling (:mod:`prunelab.channels`; the Pruner then
    needs ``example_inputs``) and hold the bias and BatchNorm entries of removed channels at zero, so the
    masked model equals its shrunk version (:func:`prunelab.export.shrink`).
    """

    criterion: Any = "magnitude"
    granularity: Any = "element"
    allocation: Any = "uniform"
    selector: Any = "topk"
    channels: bool = False  # also hold removed channels' biases and BatchNorm scale/shift at zero (shrinkable)

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

    def before_prune(self, pruner: "Pruner", ctx: "Context") -> None:
        pass

    def after_prune(self, pruner: "Pruner", old: "Masks", new: "Masks") -> dict | None:
        return None

    def state_tensors(self) -> dict[str, "Tensor"]:
        """Tensors the method carries from one pruning event to the next (e.g. which weights DropPruning has
        revived, and the values they had when pruned). Saved with each checkpoint and given back by
        :meth:`load_state_tensors`, so a run whose rounds are separate stages (or resume) continues the same
        process. Default: none."""
        return {}

    def load_state_tensors(self, tensors: dict[str, "Tensor"]) -> None:
        if tensors:
            raise CheckpointError(f"the checkpoint holds method state ({', '.join(sorted(tensors)[:2])}) that "
                                  f"method {self.name()!r} does not keep")

    def select(self, pruner: "Pruner", ctx: "Context") -> dict | None:
        """Masks decided by the method itself ({name: bool tensor}), or None to run the pipeline.

        For decisions that are not a ranking under a count (e.g. PCA's spectrum cut per layer); such a
        method's event sparsity is an outcome, and the requested one is ignored.
        """
        return None

    def describe(self) -> str:
        def n(spec: Any) -> str:
            return spec if isinstance(spec, str) else (spec.get("name") if isinstance(spec, dict) else type(spec).__name__)
        return (f"{self.name} (criterion={n(self.criterion)}, granularity={n(self.granularity)}, "
                f"allocation={n(self.allocation)}, selector={n(self.selector)})")


METHODS: Registry[Method] = Registry("method", Method)


def build_method(spec: Any) -> Method:
    """A Method from a name, a mapping with ``name`` and part overrides, or an instance."""
    return METHODS.build(spec)

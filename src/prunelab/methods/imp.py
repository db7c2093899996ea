"""Iterative magnitude pruning, lottery-ticket style, with rewinding or reinitialization between rounds.

Frankle & Carbin (ICLR 2019), Frankle et al. (late rewinding, 2020), and the study of Paganini & Forde,
"On Iterative Neural Network Pruning, Reinitialization, and the Similarity of Masks" (arXiv 2001.05050).
After each pruning round the surviving weights are set, before retraining, to:
  - ``rewind: init``: the run's initial weights (the winning-ticket protocol);
  - ``rewind: step`` with ``rewind_step: k``: the weights after k optimizer steps of dense training (late
    rewinding; the dense stage saves them);
  - ``rewind: reinit``: fresh random weights (a new draw every round), the mask kept;
  - ``rewind: none``: nothing, training continues from the pruned weights (Han et al.).
Every parameter and buffer of the model is rewound (biases and BatchNorm too); pruned weights stay zero.
The criterion, granularity and scope are the usual parts: ``criterion: magnitude | l2 | random``,
``granularity: element | filter``, ``allocation: uniform (layerwise) | global``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .base import METHODS, Method, Rewind

REWINDS = ("none", "init", "step", "reinit")


@METHODS.register("imp")
@dataclass
class IterativeMagnitude(Method):
    """Iterative magnitude pruning with rewinding: which weights survive, and what the survivors restart from.

    Magnitude top-k per layer each round; after each round the survivors are rewound (``rewind``: ``init``, the
    weights after ``rewind_step`` steps with ``step``, or a fresh draw with ``reinit``) before retraining."""

    criterion: Any = "magnitude"
    granularity: Any = "element"
    allocation: Any = "uniform"
    selector: Any = "topk"
    rewind: str = "init"
    rewind_step: int = 0

    def __post_init__(self) -> None:
        if self.rewind not in REWINDS:
            raise ConfigError(f"imp rewind must be one of {', '.join(REWINDS)}, got {self.rewind!r}")
        if self.rewind == "step" and self.rewind_step < 1:
            raise ConfigError("imp rewind: step needs rewind_step >= 1 (the dense training step to rewind to)")
        if self.rewind != "step" and self.rewind_step:
            raise ConfigError("imp rewind_step is only used with rewind: step")
        super().__post_init__()

    def rewind_point(self) -> Rewind | None:
        return None if self.rewind == "none" else Rewind(self.rewind, self.rewind_step)

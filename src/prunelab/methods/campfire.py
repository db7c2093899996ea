"""Campfire: gradual structured sparse training within kernels and filters, with masks frozen at a set point.

Gamboa, Kudrolli, Dhoot, Pedram, "Campfire: Compressible, Regularization-Free, Structured Sparse Training
for Hardware Accelerators" (arXiv 2001.03253). Magnitude scores under a gradual cubic schedule (Zhu & Gupta)
whose end freezes the masks; training then continues with them fixed. No regularizer. The granularity is
the method's main knob: ``window`` (every kernel keeps the same count; default), ``kernel`` (whole kernels,
balanced per filter), ``combined`` (kernels then windows), ``filter``, or ``nm``. The first layer and the
classifier are kept dense by default (``keep_first_dense`` / ``keep_last_dense``), as the paper's
reconstruction in ``../shared/papers.md`` section 2 ([C]) does. The learning-rate configuration during
pruning is the trainer's: decay while pruning (any schedule) or hold and decay after (``hold_epochs``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import METHODS, Method


@METHODS.register("campfire")
@dataclass
class Campfire(Method):
    """Campfire (kernel-level window pruning): which weights of each k x k kernel survive.

    Magnitude scores under the ``window`` granularity (a fixed count per kernel), the same sparsity in every
    layer, the first and last layers dense by default (``keep_first_dense`` / ``keep_last_dense``)."""

    criterion: Any = "magnitude"
    granularity: Any = "window"
    allocation: Any = "uniform"
    selector: Any = "topk"
    keep_first_dense: bool = True
    keep_last_dense: bool = True

    @property
    def default_targets(self) -> dict:
        return {"keep_first_dense": self.keep_first_dense, "keep_last_dense": self.keep_last_dense}

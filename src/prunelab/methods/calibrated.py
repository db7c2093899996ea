"""One-shot methods from calibration data.

``wanda`` (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR
2024): score |W_ij| * ||X_j||_2 with the input norms streamed over ``samples`` calibration inputs
(:mod:`prunelab.calibration`), the same fraction kept in every output row (granularity ``row``; ``nm`` for
N:M); no weight update, and no retraining needed. In a run, the calibration inputs are training inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import METHODS, Method


@METHODS.register("wanda")
@dataclass
class WandaMethod(Method):
    criterion: Any = None  # {"name": "wanda", "samples": samples}
    granularity: Any = "row"
    allocation: Any = "uniform"
    selector: Any = "topk"
    samples: int = 128

    def __post_init__(self) -> None:
        if self.criterion is None:
            self.criterion = {"name": "wanda", "samples": self.samples}
        super().__post_init__()

"""Magnitude and random pruning.

``magnitude``: keep the largest |w| (Han et al., "Learning both Weights and Connections for Efficient Neural
Networks", NeurIPS 2015, when driven by an iterative schedule with retraining).
``random``: keep a uniformly random subset of the same size, the control every result should be set against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import METHODS, Method


@METHODS.register("magnitude")
@dataclass
class MagnitudeMethod(Method):
    """Magnitude pruning: which weights survive, by |w|, under any granularity, allocation and selector."""

    criterion: Any = "magnitude"


@METHODS.register("random")
@dataclass
class RandomMethod(Method):
    """Random pruning (the control): which weights survive, drawn at random from the run's seed."""

    criterion: Any = "random"

"""Methods: named compositions of criterion, granularity, allocation and selector, with lifecycle hooks.

Each method is a dataclass whose fields are part specs, so any part can be overridden by name:
``{"name": "magnitude", "granularity": "filter", "allocation": "global"}``.
"""
from __future__ import annotations

from .base import METHODS, Decision, Method, Outcome, PruneView, Rewind, build_method
from . import basic, calibrated, campfire, drop_pruning, imp, pca, structured  # noqa: F401  (registers the built-ins)

__all__ = ["METHODS", "Decision", "Method", "Outcome", "PruneView", "Rewind", "build_method"]

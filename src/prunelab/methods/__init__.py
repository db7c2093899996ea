"""Methods: named compositions of criterion, granularity, allocation and selector, with lifecycle hooks.

Each method is a dataclass whose fields are part specs, so any part can be overridden by name:
``{"name": "magnitude", "granularity": "filter", "allocation": "global"}``.
"""
from __future__ import annotations

from .base import METHODS, Decision, Method, Outcome, PruneView, Rewind, build_method
from . import basic
from . import calibrated
from . import campfire
from . import drop_pruning
from . import imp
from . import pca
from . import structured  # noqa: F401  (registers the built-ins)

__all__ = ["METHODS", "Decision", "Method", "Outcome", "PruneView", "Rewind", "build_method"]

"""prunelab: neural-network pruning for PyTorch.

One engine (criterion -> granularity -> allocation -> selector, under a schedule) for any ``nn.Module``,
usable from your own training loop through :class:`Pruner` or from recipes through the CLI.
"""
from __future__ import annotations

from .allocation import ALLOCATIONS
from .criteria import CRITERIA
from .errors import CheckpointError, ConfigError, DataMissingError, PrunelabError
from .granularity import GRANULARITIES
from .masks import Masks
from .methods import METHODS, Method, build_method
from .pruner import Pruner
from .schedules import SCHEDULES
from .selection import SELECTORS
from .targets import Targets

__version__ = "0.1.0"

__all__ = [
    "Pruner", "Masks", "Targets", "Method", "build_method",
    "METHODS", "CRITERIA", "GRANULARITIES", "ALLOCATIONS", "SELECTORS", "SCHEDULES",
    "PrunelabError", "ConfigError", "DataMissingError", "CheckpointError", "__version__",
]

"""prunelab: neural-network pruning for PyTorch.

One engine (criterion -> granularity -> allocation -> selector, under a schedule) for any ``nn.Module``,
usable from your own training loop through :class:`Pruner` or from recipes through the CLI.

The public names are imported on first use (PEP 562), so ``import prunelab`` and ``prunelab --help`` cost
no more than the parts they touch (``benchmarks/import_time.py``); ``prunelab.methods`` and the other
submodules are reachable as attributes too.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import CheckpointError, ConfigError, DataMissingError, PrunelabError

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "Pruner": "pruner", "Masks": "masks", "Targets": "targets", "Method": "methods", "build_method": "methods",
    "METHODS": "methods", "CRITERIA": "engine.criteria", "GRANULARITIES": "engine.granularity",
    "ALLOCATIONS": "engine.allocation", "SELECTORS": "engine.selection", "SCHEDULES": "engine.schedules",
    "set_threads": "training.threads", "Distillation": "training.distill",
}

__all__ = [
    "Pruner", "Masks", "Targets", "Method", "build_method", "set_threads", "Distillation",
    "METHODS", "CRITERIA", "GRANULARITIES", "ALLOCATIONS", "SELECTORS", "SCHEDULES",
    "PrunelabError", "ConfigError", "DataMissingError", "CheckpointError", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)  # a submodule: prunelab.methods, prunelab.export
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'prunelab' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

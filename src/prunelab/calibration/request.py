"""What a method asks of calibration, and what the caller sets: one request, resolved once by the Pruner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..registry import check_count
from ..errors import ConfigError, first_line
from .observers import KINDS

PRECISIONS = ("float32", "float64")
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Calibration:
    """A method's calibration request, declared on its :class:`~prunelab.engine.criteria.Needs`.

    ``samples``: the method's own number of calibration inputs (a count the caller gives overrides it).
    ``passes``: the statistics measured over each group of targets, one kind set per pass, in order (kinds:
    ``norms``, ``gram``, ``sums``, ``outputs``, ``mean_abs``, ``influence``); after each pass the method decides
    and the Pruner writes the decision before the next pass (PCA: output moments, its units removed, then the
    inputs' mean |a|).
    ``sequential``: groups are measured in the model's order, each on the inputs the groups already pruned
    produce (block by block for a chain of blocks); otherwise every group from the dense model.
    """

    samples: int
    passes: tuple[frozenset[str], ...] = (frozenset({"norms"}),)
    sequential: bool = False

    def __post_init__(self) -> None:
        check_count("a calibration request's samples", self.samples)
        passes = tuple(frozenset([p] if isinstance(p, str) else p) for p in self.passes)
        bad = sorted(k for p in passes for k in p if k not in KINDS)
        if bad or not passes or not all(passes):
            raise ConfigError(f"calibration statistics are {', '.join(sorted(KINDS))}; got {bad or list(passes)}")
        if self.sequential and any(p & {"influence", "routing"} for p in passes):
            raise ConfigError("block influence and expert routing are measured over whole forward passes: they "
                              "cannot be measured sequentially")
        object.__setattr__(self, "passes", passes)


@dataclass(frozen=True)
class Options:
    """What the caller of :meth:`Pruner.calibrate` chooses: ``samples`` (None: the method's own count),
    ``device`` (where blocks compute; None: where the model is), ``cache_dtype`` (the host copy of cached block
    inputs; None: as computed), ``precision`` of norms, Gram matrices and reconstruction, ``sequential_targets``
    (globs naming the blocks; None: the model's ``_no_split_modules`` or the heuristic), ``distributed``
    (None: share the samples across ranks whenever torch.distributed is initialised), ``offload``: the
    :class:`~prunelab.calibration.disk.DiskWeights` of a model whose weights are on disk (block by block)."""

    samples: int | None = None
    device: torch.device | None = None
    cache_dtype: torch.dtype | None = None
    precision: str = "float32"
    sequential_targets: tuple[str, ...] | None = None
    distributed: bool | None = None
    offload: Any = None

    def resolve_samples(self, request: Calibration) -> int:
        """The caller's sample count, else the method's: the one place this is decided."""
        return self.samples if self.samples is not None else request.samples


def options(samples: Any = None, device: Any = None, cache_dtype: Any = None, precision: Any = "float32",
            sequential_targets: Any = None, distributed: Any = None, given: Options | None = None,
            offload: Any = None) -> Options:
    """:class:`Options` from a caller's arguments, each checked: ConfigError in one sentence on a bad one.
    ``given``: an Options made before (a recipe's), returned as it is; then the other arguments must be unset."""
    if given is not None:
        if (samples, device, cache_dtype, sequential_targets, distributed, offload) != (None,) * 6 \
                or precision != "float32":
            raise ConfigError("calibration takes options=Options(...) or the separate keywords, not both")
        if not isinstance(given, Options):
            raise ConfigError(f"calibration options are a prunelab.calibration.Options, got {type(given).__name__}")
        return given
    if samples is not None:
        check_count("calibration samples", samples)
    if precision not in PRECISIONS:
        raise ConfigError(f"calibration precision is float32 or float64, got {precision!r}")
    if isinstance(cache_dtype, str):
        if cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"cache_dtype is one of {', '.join(CACHE_DTYPES)}, got {cache_dtype!r}")
        cache_dtype = CACHE_DTYPES[cache_dtype]
    elif cache_dtype is not None and cache_dtype not in CACHE_DTYPES.values():
        raise ConfigError(f"cache_dtype is one of {', '.join(CACHE_DTYPES)}, got {cache_dtype!r}")
    if device is not None:
        device = check_device(device)
    if sequential_targets is not None:
        if isinstance(sequential_targets, str):
            sequential_targets = [sequential_targets]
        if not isinstance(sequential_targets, Sequence) or not sequential_targets or not all(
                isinstance(g, str) and g for g in sequential_targets):
            raise ConfigError(f"sequential_targets is a list of module-name globs, got {sequential_targets!r}")
        sequential_targets = tuple(sequential_targets)
    if distributed is not None and not isinstance(distributed, bool):
        raise ConfigError(f"distributed is true, false or null, got {distributed!r}")
    if offload is not None and not hasattr(offload, "onload"):
        raise ConfigError(f"offload is the DiskWeights of prunelab.calibration.disk.open_on_disk, got "
                          f"{type(offload).__name__}")
    return Options(samples, device, cache_dtype, precision, sequential_targets, distributed, offload)


def check_device(device: Any) -> torch.device:
    """``device`` as a torch.device this machine has; ConfigError naming it otherwise."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        reason = first_line(exc, 120)
        raise ConfigError(f"calibration device {device!r} is not available here ({reason})") from None
    if dev.type == "meta":  # holds shapes, no values: every statistic would be empty and every score equal
        raise ConfigError("calibration device 'meta' holds no values, so nothing can be measured on it; use "
                          "'cpu' or an accelerator")
    return dev

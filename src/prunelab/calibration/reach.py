"""Which targets calibration can reach, found before it runs: one forward pass on the example inputs with a hook on
each target's observer module (:func:`.observers.owners`).

A weight whose module is never called cannot be given statistics by a hook: its parent reads it itself (the Mamba
mixers of Jamba, Mamba-2, Zamba2, Granite-4 and LFM2 pass ``conv1d.weight`` to ``F.conv1d`` and multiply by
``dt_proj.weight``), or a branch the forward skips holds it. With the default targets those weights are left out
of a calibrated method's pruning, each with its reason in the Pruner's ``skipped`` (and so in every summary's
accounting); a user who names them in ``targets.include`` asked for them on purpose and gets the calibration's
one-sentence refusal instead.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ..errors import ConfigError
from .observers import hooked, owners, run_model


def never_called(model: nn.Module, targets: Mapping[str, Tensor], example_inputs: Any, method: str) -> dict[str, str]:
    """``{target: why it is left out}`` for the targets whose observer module one forward pass on
    ``example_inputs`` never calls; {} when the pass itself fails (calibration then says why, in its own words)."""
    try:
        mods = owners(model, targets)
    except ConfigError:  # unobservable layers: the calibration's own sentence names them
        return {}
    called: set[int] = set()
    hooks = {m: (lambda mod, *_: called.add(id(mod))) for m, _ in mods.values()}
    try:
        with hooked(model, hooks):
            run_model(model, example_inputs)
    except ConfigError:
        return {}
    return {name: (f"{name} is read by its parent's forward directly ({type(m).__name__} {name.rpartition('.')[0]} is "
                   f"never called), so no hook sees its inputs: {method} leaves it dense (name it in "
                   f"targets.include to be told why it cannot be calibrated)")
            for name, (m, _) in mods.items() if id(m) not in called}


def reachable(model: nn.Module, params: dict[str, Tensor], skipped: dict[str, str], example_inputs: Any,
              method: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(``params`` without the targets :func:`never_called` finds, ``skipped`` with them and their reasons);
    ConfigError when no target is left."""
    gone = never_called(model, params, example_inputs, method)
    if gone and len(gone) == len(params):
        raise ConfigError(f"calibration can reach none of the targets: {next(iter(gone.values()))}")
    return {n: p for n, p in params.items() if n not in gone}, {**skipped, **gone}

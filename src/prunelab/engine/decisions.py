"""What a method returns (:class:`Decision`, :class:`Outcome`) and what the Pruner does with it: check, write, record.

The Pruner is the only writer of the model. A calibrated event is decided group by group
(:mod:`prunelab.calibration`): each group's decision is checked here before anything of it is written (every
asked target has a boolean mask of its shape, new values are finite and of the weight's shape), then written
(new values, pruned weights and the biases / norm entries of removed channels set to zero), so the next group
is measured on the model as the decisions so far leave it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..masks import zero_pruned


@dataclass
class Decision:
    """What a method's :meth:`Method.decide` returns for the targets it was asked about (``ctx.group``):
    ``masks`` {name: bool tensor}; ``values`` {name: new full-shape weight} for methods that also update the
    survivors (SparseGPT), written by the Pruner with the pruned entries zeroed; ``record`` joins the event's
    entry in ``pruner.history`` (dicts merged, numbers summed over the groups of an event); ``shifts`` {name:
    amount} are added to parameters that are not targets (a reader's bias absorbing the mean of what the removed
    units gave it: FLAP's bias compensation, :meth:`Method.shifts`)."""

    masks: dict[str, Tensor]
    values: dict[str, Tensor] = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    shifts: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a method's ``after_prune`` hands back: ``record`` joins the event's entry in ``pruner.history``;
    ``values`` are weights to set, ``{name: (where, value)}`` with a bool mask and a full-shape tensor (e.g.
    DropPruning's revived weights restarting at their pruned value). The Pruner applies them."""

    record: dict = field(default_factory=dict)
    values: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


def as_decision(method: str, out: Any, names: tuple[str, ...], params: Mapping[str, nn.Parameter],
                named: Mapping[str, nn.Parameter] | None = None) -> Decision:
    """``out`` (a Decision, or a mapping of masks as older methods return) cut to ``names`` and checked:
    ConfigError naming the method and the target when a mask is missing, of another shape or not boolean-like,
    or a new value or shift is of another shape or not finite (shifts checked against ``named``, the model's
    parameters)."""
    if isinstance(out, Mapping):
        out = Decision(dict(out))
    if not isinstance(out, Decision):
        raise ConfigError(f"method {method}'s decide returned {type(out).__name__}, not a Decision or masks")
    masks, values = {}, {}
    for n in names:
        p = params[n]
        m = out.masks.get(n)
        if not isinstance(m, Tensor) or tuple(m.shape) != tuple(p.shape):
            raise ConfigError(f"method {method} decided no mask of shape {tuple(p.shape)} for {n}")
        masks[n] = m.to(device=p.device, dtype=torch.bool)
        v = out.values.get(n)
        if v is not None:
            if not isinstance(v, Tensor) or tuple(v.shape) != tuple(p.shape):
                raise ConfigError(f"method {method} returned a new value for {n} that is not of its shape")
            if not bool(torch.isfinite(v).all()):
                raise ConfigError(f"method {method} computed NaN or infinite weights for {n}: nothing of them "
                                  "was written (more calibration samples or stronger dampening may help)")
            values[n] = v
    return Decision(masks, values, dict(out.record), check_shifts(method, out.shifts, named or {}))


def check_shifts(method: str, shifts: Mapping[str, Tensor], named: Mapping[str, nn.Parameter]) -> dict[str, Tensor]:
    """``shifts`` checked against the model's parameters ``named``: each names one of them, is of its shape and
    finite. ConfigError naming the method otherwise."""
    for n, t in shifts.items():
        p = named.get(n)
        if p is None or not isinstance(t, Tensor) or tuple(t.shape) != tuple(p.shape):
            raise ConfigError(f"method {method} returned a shift for {n}, which is not a parameter of that shape")
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(f"method {method} computed NaN or infinite shifts for {n}: nothing of them was written")
    return dict(shifts)


def write(params: Mapping[str, nn.Parameter], d: Decision, companions: Callable[[dict], dict] | None = None,
          named: Mapping[str, nn.Parameter] | None = None) -> None:
    """Write a checked decision: new values, then every pruned weight set to exactly zero, then the shifts
    added; ``companions`` maps weight masks to the keep-masks of channel biases and norm entries (``named`` the
    model's parameters, needed with companions or shifts)."""
    with torch.no_grad():
        for n, keep in d.masks.items():
            p = params[n]
            if n in d.values:
                p.copy_(d.values[n].to(device=p.device, dtype=p.dtype))
            zero_pruned(p, keep)
        if companions is not None:
            for n, keep in companions(d.masks).items():
                zero_pruned(named[n], keep.to(named[n].device))
        for n, t in d.shifts.items():
            named[n].add_(t.to(device=named[n].device, dtype=named[n].dtype))


def merge(into: dict, record: Mapping) -> dict:
    """``record`` merged into ``into`` (in place): dicts merged recursively, numbers summed, the rest replaced."""
    for k, v in record.items():
        old = into.get(k)
        if isinstance(old, dict) and isinstance(v, Mapping):
            merge(old, v)
        elif isinstance(old, (int, float)) and isinstance(v, (int, float)) and not isinstance(v, bool):
            into[k] = old + v
        else:
            into[k] = merge({}, v) if isinstance(v, Mapping) else v
    return into


def versions(params: Mapping[str, nn.Parameter]) -> list[int]:
    """The in-place write counters of the targets: a method that writes a weight changes one."""
    return [p._version for p in params.values()]


def set_values(params: Mapping[str, nn.Parameter], values: Mapping[str, tuple[Tensor, Tensor]]) -> None:
    """Write the weights a method's ``after_prune`` sets (an :class:`Outcome`'s ``{name: (where, value)}``, e.g.
    revived weights restarting at their pruned value)."""
    with torch.no_grad():
        for name, (where, value) in values.items():
            p = params[name]
            p[where] = value.to(device=p.device, dtype=p.dtype)[where]

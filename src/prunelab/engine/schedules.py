"""Schedules: when to prune, and to what sparsity.

A schedule lists its pruning events as ``(step, sparsity)`` pairs, where a step is whatever the caller counts
(the Pruner counts optimizer steps; the experiment runner converts epochs to steps). After its last event a
schedule is *frozen*: the masks do not change any more, though they are still enforced.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..errors import ConfigError
from ..limits import MAX_EVENTS
from ..registry import Registry, check_count, check_fraction


class Schedule:
    """When to prune, and to what sparsity: the schedule's one question.

    ``events()`` returns the planned ``(step, sparsity)`` pairs in step order (steps counted in calls to
    :meth:`prunelab.Pruner.step`; step 0 prunes at construction), the last at the final ``sparsity``; an empty
    list for a manual schedule the caller drives. ``frozen(step)``: whether the masks no longer change after it.
    Registered with ``@SCHEDULES.register(name)``."""

    sparsity: float = 0.0

    def events(self) -> list[tuple[int, float]]:
        """The planned ``(step, sparsity)`` pruning events, in step order."""
        raise NotImplementedError

    @cached_property
    def _by_step(self) -> dict[int, float]:
        return dict(self.events())

    def target(self, step: int) -> float | None:
        """The sparsity to prune to at this step, or None when no pruning happens at it."""
        return self._by_step.get(step)

    def frozen(self, step: int) -> bool:
        """True once every pruning event is at or before ``step``."""
        ev = self.events()
        return not ev or step >= ev[-1][0]


SCHEDULES: Registry[Schedule] = Registry("schedule", Schedule)


def _check_step(name: str, v: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2 ** 63:
        raise ConfigError(f"{name} must be a non-negative integer (below 2**63), got {v!r}")
    return v


@SCHEDULES.register("oneshot")
@dataclass
class OneShot(Schedule):
    """Prune once, at step ``at`` (0 = as soon as the Pruner is built)."""

    sparsity: float = 0.5
    at: int = 0

    def __post_init__(self):
        check_fraction("sparsity", self.sparsity)
        _check_step("at", self.at)

    def events(self):
        return [(self.at, self.sparsity)]


@SCHEDULES.register("iterative")
@dataclass
class Iterative(Schedule):
    """Geometric rounds: each of ``rounds`` events removes the same fraction of the weights still alive.

    Round r (1-based) happens at step ``start + (r - 1) * interval`` and reaches sparsity
    ``1 - (1 - sparsity) ** (r / rounds)``; the last round reaches ``sparsity`` itself.
    """

    sparsity: float = 0.9
    rounds: int = 5
    interval: int = 1
    start: int = 0

    def __post_init__(self):
        check_fraction("sparsity", self.sparsity)
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or not 1 <= self.rounds <= MAX_EVENTS:
            raise ConfigError(f"rounds must be an integer from 1 to {MAX_EVENTS:,}, got {self.rounds!r}")
        _check_step("start", self.start)
        if _check_step("interval", self.interval) == 0 and self.rounds > 1:
            raise ConfigError("interval must be positive when there is more than one round")

    def round_sparsity(self, r: int) -> float:
        if r >= self.rounds:
            return self.sparsity
        return 1 - (1 - self.sparsity) ** (r / self.rounds)

    def events(self):
        return [(self.start + (r - 1) * self.interval, self.round_sparsity(r)) for r in range(1, self.rounds + 1)]


@SCHEDULES.register("cubic")
@dataclass
class Cubic(Schedule):
    """Gradual pruning of Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - start) / (end - start))^3.

    Events at ``start``, every ``frequency`` steps after it, and at ``end``; frozen after ``end``.
    """

    sparsity: float = 0.9
    start: int = 0
    end: int = 100
    frequency: int = 10
    initial: float = 0.0

    def __post_init__(self):
        check_fraction("sparsity", self.sparsity)
        check_fraction("initial sparsity", self.initial)
        _check_step("start", self.start)
        _check_step("end", self.end)
        if self.end <= self.start:
            raise ConfigError(f"cubic schedule needs end > start, got start={self.start}, end={self.end}")
        check_count("frequency", self.frequency)
        if (self.end - self.start) // self.frequency > MAX_EVENTS:
            raise ConfigError(f"this cubic schedule plans {(self.end - self.start) // self.frequency + 1:,} pruning "
                              f"events, more than {MAX_EVENTS:,}: prune less often (a larger frequency)")

    def sparsity_at(self, step: int) -> float:
        if step <= self.start:
            return self.initial
        if step >= self.end:
            return self.sparsity
        frac = (step - self.start) / (self.end - self.start)
        return self.sparsity + (self.initial - self.sparsity) * (1 - frac) ** 3

    def events(self):
        steps = list(range(self.start, self.end, self.frequency)) + [self.end]
        return [(t, self.sparsity_at(t)) for t in steps]


__all__ = ["SCHEDULES", "Schedule", "OneShot", "Iterative", "Cubic", "Manual"]


@SCHEDULES.register("manual")
@dataclass
class Manual(Schedule):
    """No events: the caller decides when to prune with ``pruner.prune(sparsity)`` (the runner's rounds)."""

    sparsity: float = 0.9

    def __post_init__(self):
        check_fraction("sparsity", self.sparsity)

    def events(self):
        return []

    def frozen(self, step: int) -> bool:
        return False  # the caller may prune at any time


def build_schedule(schedule, sparsity: float | None, fixed_density: float | None = None) -> Schedule:
    """The Pruner's schedule from its arguments: an instance (whose sparsity a given ``sparsity`` must equal), or
    a name / mapping built with ``sparsity`` (default: the one an N:M granularity's ``fixed_density`` fixes);
    ConfigError when no sparsity is given or it contradicts the granularity's."""
    if isinstance(schedule, Schedule):
        if sparsity is not None and abs(check_fraction("sparsity", sparsity) - schedule.sparsity) > 1e-12:
            raise ConfigError(f"sparsity={sparsity:g} differs from the schedule's {schedule.sparsity:g}; give one")
    else:
        if sparsity is None and fixed_density is not None:
            sparsity = 1 - fixed_density
        if sparsity is None and not (isinstance(schedule, dict) and "sparsity" in schedule):
            raise ConfigError("give the target sparsity: Pruner(model, ..., sparsity=0.9)")
        schedule = SCHEDULES.build(schedule, **({"sparsity": sparsity} if sparsity is not None else {}))
    if fixed_density is not None and abs(1 - fixed_density - schedule.sparsity) > 1e-9:
        raise ConfigError(f"this N:M pattern fixes sparsity at {1 - fixed_density:g}; got sparsity={schedule.sparsity:g}")
    return schedule

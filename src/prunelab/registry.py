"""Registries: every engine part is built from a name, a dict ``{"name": ..., **params}`` or an instance.

Unknown names and unknown parameters are :class:`~prunelab.errors.ConfigError` listing what is valid, so a
typo in a recipe fails at once with the fix in the message instead of deep inside a run.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of constructors (usually dataclasses) of one kind of part."""

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is a programming error."""

        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def get(self, name: str) -> Callable[..., T]:
        if not isinstance(name, str):  # e.g. `prune.method.name={name: x}`: a mapping where a name is meant
            raise ConfigError(f"a {self.kind} name must be a string; got {type(name).__name__} {name!r}; "
                              f"valid: {', '.join(self.names())}")
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._items[name]

    def build(self, spec: Any, **defaults: Any) -> T:
        """Build a part from ``"name"``, ``{"name": .., **params}`` or an existing instance.

        ``defaults`` fill parameters the spec does not give, and are dropped silently when the
        constructor does not accept them (so a caller can offer e.g. ``seed`` to every part).
        """
        if self.base is not None and isinstance(spec, self.base):
            return spec
        if isinstance(spec, str):
            name, params = spec, {}
        elif isinstance(spec, dict):
            if "name" not in spec:
                raise ConfigError(f"a {self.kind} given as a mapping needs a 'name' key; valid names: "
                                  f"{', '.join(self.names())}")
            params = {k: v for k, v in spec.items() if k != "name"}
            name = spec["name"]
        else:
            raise ConfigError(f"a {self.kind} must be a name, a mapping with 'name', or an instance; "
                              f"got {type(spec).__name__}")
        ctor = self.get(name)
        valid = accepted_params(ctor)
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {self.kind} {name!r}; "
                              f"valid: {', '.join(sorted(valid)) or 'none'}")
        bad = _non_finite(params)
        if bad:
            raise ConfigError(f"{self.kind} {name!r} parameter {bad} must be a finite number")
        for key, value in defaults.items():
            if key in valid and key not in params:
                params[key] = value
        try:
            return ctor(**params)
        except TypeError as exc:  # e.g. a missing required parameter
            raise ConfigError(f"cannot build {self.kind} {name!r}: {exc}") from None


def _non_finite(value: Any, path: str = "") -> str | None:
    """The dotted path of the first non-finite float in ``value`` (nested mappings and lists), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path.lstrip(".") or "value"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{path}.{k}")
        if found:
            return found
    return None


def accepted_params(ctor: Callable[..., Any]) -> set[str]:
    """The keyword parameters a constructor accepts (dataclass init fields or signature)."""
    if dataclasses.is_dataclass(ctor):
        return {f.name for f in dataclasses.fields(ctor) if f.init}
    sig = inspect.signature(ctor)
    return {p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_fraction(name: str, value: float, *, allow_one: bool = False) -> float:
    """Validate a sparsity/density-like number: in [0, 1) (or [0, 1] with ``allow_one``). A string or a bool
    is refused even when it would convert (``"0.5"`` is a typo in Python code, not a number)."""
    if isinstance(value, (str, bytes, bool)):
        raise ConfigError(f"{name} must be a number in [0, 1{']' if allow_one else ')'}, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1{']' if allow_one else ')'}, got {value!r}") from None
    ok = 0.0 <= value <= 1.0 if allow_one else 0.0 <= value < 1.0
    if not ok:
        raise ConfigError(f"{name} must be in [0, 1{']' if allow_one else ')'}, got {value}")
    return value


def check_count(name: str, value: int, low: int = 1, why: str = "", high: int | None = None) -> int:
    """Validate a count (samples, batches, rounds, a window ...): an int, not a bool, at least ``low`` (and at
    most ``high`` when given); ConfigError in one sentence otherwise (``why`` says what the count is, after the
    bound). The one check of its kind."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
        if high is not None:
            kind += f" at most {high:,}"
        raise ConfigError(f"{name} must be {kind}{f' ({why})' if why else ''}, got {value!r}")
    return value

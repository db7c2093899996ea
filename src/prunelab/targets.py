"""Targets: which parameters may be pruned.

By default the weights of every Conv and Linear layer; include/exclude by glob over parameter names
(``features.*.weight``) or by module type name, with options to keep the first and the last matched layer
dense (in module registration order, which for sequential models is execution order).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from .errors import ConfigError

DEFAULT_TYPES = ["Conv1d", "Conv2d", "Conv3d", "Linear"]


@dataclass
class Targets:
    """Selects prunable weight tensors of a model.

    include / exclude: glob patterns over parameter names; a parameter must match some ``include``
    pattern and no ``exclude`` pattern. module_types: class names of modules whose ``weight`` may be
    pruned. keep_first_dense / keep_last_dense: drop the first / last of the matched layers.
    """

    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    module_types: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))
    keep_first_dense: bool = False
    keep_last_dense: bool = False

    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The prunable parameters, ``{name: parameter}``, in registration order.

        Raises ConfigError when nothing matches, so a typo in a pattern cannot silently prune nothing.
        """
        found: dict[str, nn.Parameter] = {}
        seen: set[int] = set()
        for mod_name, module in model.named_modules():
            if type(module).__name__ not in self.module_types:
                continue
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter) or id(weight) in seen:
                continue
            name = f"{mod_name}.weight" if mod_name else "weight"
            if not any(fnmatch.fnmatchcase(name, p) for p in self.include):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
                continue
            seen.add(id(weight))
            found[name] = weight
        names = list(found)
        if self.keep_first_dense and names:
            found.pop(names[0])
        if self.keep_last_dense and len(names) > 1:
            found.pop(names[-1])
        if not found:
            raise ConfigError(
                f"no prunable parameters matched (include={self.include}, exclude={self.exclude}, "
                f"module_types={self.module_types})")
        return found


def build_targets(spec: "Targets | dict | None") -> Targets:
    """Targets from None (defaults), a mapping of its fields, or an instance."""
    if spec is None:
        return Targets()
    if isinstance(spec, Targets):
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(f"targets must be a mapping, got {type(spec).__name__}")
    valid = set(Targets.__dataclass_fields__)
    unknown = sorted(set(spec) - valid)
    if unknown:
        raise ConfigError(f"unknown targets option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    spec = {k: ([v] if k in ("include", "exclude", "module_types") and isinstance(v, str) else v)
            for k, v in spec.items()}
    return Targets(**spec)

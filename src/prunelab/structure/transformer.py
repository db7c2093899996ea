"""Transformer units as units of structure: the MLP channels, key-value groups, hidden size and blocks of a Hugging
Face transformer of a known layout (:mod:`.families`, :mod:`.units`), behind the one protocol the Pruner drives."""
from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor, nn

from ..engine.loop import Selection
from ..inputs import Inputs
from .families import Family, check_layout
from .recognize import family_of
from .units import build_groups, check_targets, companion_masks, removed_units, select_units, supported_kinds, UnitGroup

DEFAULT_UNITS = ("mlp", "heads")


class TransformerUnits:
    """The units of structure of a Hugging Face transformer of a known layout (:class:`.protocol.Units`).

    ``kinds``: which units (``mlp``, ``heads``, ``hidden``, ``depth``; default mlp and heads where the config
    can hold fewer heads; only heads for a mixture of experts). ``params``: the Pruner's targets; only groups whose weight matrices are all
    targets take part.
    """

    def __init__(self, model: nn.Module, family: Family, params: Mapping[str, Tensor],
                 kinds: Sequence[str] | None = None, example_inputs: Inputs | None = None) -> None:
        if kinds is None:  # of mlp and heads, what the layout can lose exactly
            kinds = tuple(k for k in DEFAULT_UNITS if k in supported_kinds(model, family))
        self.model, self.family, self.kinds = model, family, tuple(kinds)
        if example_inputs is not None:
            check_layout(model, family, example_inputs)
        self.all_groups = build_groups(model, family, self.kinds)
        self.groups: list[UnitGroup] = check_targets(self.all_groups, params, model)

    def select(self, params: Mapping[str, Tensor], layouts, gran, scores: dict[str, Tensor],
               masks: Mapping[str, Tensor], how: Selection) -> dict[str, Tensor]:
        """New target masks (see :func:`.units.select_units`; the units sum the per-weight scores themselves, so
        ``layouts`` and ``gran`` are not needed)."""
        return select_units(self.groups, params, scores, masks, how, self.family.layers)

    def removed(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{group name: removed unit indices}`` of the groups that lost units."""
        out = {}
        for g in self.groups:
            gone = removed_units(g, masks)
            if gone.any():
                out[g.name] = gone.nonzero().flatten()
        return out

    def companion_masks(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keep-masks of removed units' biases, norm entries and embedding columns (False: held at zero)."""
        return companion_masks(self.groups, masks, masks, dict(self.model.named_parameters()))

    def report(self, params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """Per unit kind: units that could go (``prunable``), ``removed``, and the width each block keeps;
        ``untargeted``: units whose weights are not all targets."""
        out: dict = {"layout": self.family.name, "units": {}}
        taking = {g.name for g in self.groups}
        for g in self.all_groups:
            row = out["units"].setdefault(g.kind, {"prunable": 0, "removed": 0, "untargeted": 0, "kept": []})
            if g.name not in taking:
                row["untargeted"] += g.size
                continue
            gone = int(removed_units(g, masks).sum())
            row["prunable"] += g.size
            row["removed"] += gone
            row["kept"].append(g.size - gone)
        return out


def transformer_units(model: nn.Module, params: Mapping[str, Tensor], kinds: Sequence[str] | None = None,
                      example_inputs: Inputs | None = None) -> TransformerUnits | None:
    """:class:`TransformerUnits` of ``model`` when it is a transformer of a known layout, else None."""
    fam = family_of(model)
    return None if fam is None else TransformerUnits(model, fam, params, kinds, example_inputs)

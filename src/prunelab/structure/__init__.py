"""Units of structure: what must go together across tensors for a model to get smaller.

Convolutional networks (and any model without a known block layout): coupled output channels from
Torch-Pruning's dependency graph (:mod:`prunelab.structure.channels`, :mod:`prunelab.structure.coupling`). Hugging Face
transformers of a known layout (:mod:`.families`): MLP channels, key-value groups, the hidden size and whole
blocks read from the blocks' modules (:mod:`.units`), checked on one batch, built once per Pruner and reused by
every round, the summary and the export, which writes the same transformers class with a smaller config
(:mod:`.hf`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor, nn

from ..inputs import Inputs
from .families import FAMILIES, Family, check_layout, family_of
from .units import (KINDS, UnitGroup, build_groups, check_targets, companion_masks, removed_units, select_units,
                    supported_kinds)

DEFAULT_UNITS = ("mlp", "heads")

__all__ = ["FAMILIES", "KINDS", "TransformerUnits", "family_of", "transformer_units"]


class TransformerUnits:
    """The unit groups of a Hugging Face transformer of a known layout, for the Pruner's channel selection.

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

    def select(self, params, layouts, gran, scores, masks, allocation, selector, sparsity, final_sparsity,
               ctx) -> dict[str, Tensor]:
        """New target masks (see :func:`.units.select_units`; the same call as the traced
        :meth:`prunelab.structure.channels.ChannelGraph.select`, units summing the per-weight scores themselves)."""
        return select_units(self.groups, params, scores, masks, allocation, selector, sparsity, final_sparsity, ctx,
                            self.family.layers)

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


def structure_for(model: nn.Module, params: Mapping[str, Tensor], method, example_inputs: Inputs):
    """The units of structure a channel method chooses from: :class:`TransformerUnits` for a transformer of a
    known layout, else the traced :class:`~prunelab.structure.channels.ChannelGraph`. Built once per Pruner."""
    from ..engine.allocation import Uniform
    from .channels import ChannelGraph
    from ..errors import ConfigError

    kinds = getattr(method, "unit_kinds", None)
    found = transformer_units(model, params, kinds, example_inputs)
    if found is None:
        if kinds is not None:
            raise ConfigError(f"units {', '.join(kinds)} are read from the blocks of Hugging Face transformers of a "
                              f"known layout ({', '.join(sorted(FAMILIES))}); this model is not one: use a channel "
                              "method without units")
        return ChannelGraph(model, example_inputs)
    if not isinstance(method.allocation_, Uniform) and any(g.kind in ("mlp", "heads") for g in found.groups):
        raise ConfigError(f"allocation {method.allocation_.registered_name} would give blocks different widths, and "
                          f"transformers builds a {found.family.name} model with one MLP width and one head count "
                          "for every block: use allocation uniform")
    return found

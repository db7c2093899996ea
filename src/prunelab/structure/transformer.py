"""Transformer units as units of structure: the MLP channels, key-value groups, hidden size and blocks of a Hugging
Face transformer of a known layout (:mod:`.families`, :mod:`.units`), behind the one protocol the Pruner drives."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from torch import Tensor, nn

from ..engine.loop import Selection
from ..errors import ConfigError
from ..inputs import Inputs
from .bias import carry_biases, compensation
from .experts import Routing, router_name, top_k
from .families import Family, attention_shape, check_layout
from .recognize import family_of
from .units import build_groups, check_targets, companion_masks, removed_units, select_units, supported_kinds, UnitGroup

DEFAULT_UNITS = ("mlp", "heads")


class TransformerUnits:
    """The units of structure of a Hugging Face transformer of a known layout (:class:`.protocol.Units`).

    ``kinds``: which units (``mlp``, ``heads``, ``hidden``, ``depth``; default mlp and heads where the config
    can hold fewer heads; only heads for a mixture of experts). ``params``: the Pruner's targets; only groups whose weight matrices are all
    targets take part. ``compensate``: the readers of MLP channels and heads get the biases FLAP's compensation
    writes (:func:`.bias.carry_biases`: zero, added to the model here, before any selection; ``biases_added``).
    """

    def __init__(self, model: nn.Module, family: Family, params: Mapping[str, Tensor],
                 kinds: Sequence[str] | None = None, example_inputs: Inputs | None = None,
                 expert_score: str = "criterion", round_to: int = 1,
                 kind_sparsity: Mapping[str, float] | None = None, score_from: str = "all",
                 compensate: bool = False) -> None:
        if kinds is None:  # of mlp and heads, what the layout can lose exactly
            kinds = tuple(k for k in DEFAULT_UNITS if k in supported_kinds(model, family))
        self.model, self.family, self.kinds, self.expert_score = model, family, tuple(kinds), expert_score
        self.multiples, self.kind_sparsity = width_multiples(model, round_to), dict(kind_sparsity or {})
        # the readers' input dimension as stored: 1 for (out, in) weights, 0 for GPT-2's (in, out) Conv1D
        self.reader_dim = None if score_from == "all" else (0 if family.transposed else 1)
        if example_inputs is not None:
            check_layout(model, family, example_inputs)
        # before the groups are read: a reader's new bias is then a part of its units like any other bias
        self.biases_added = carry_biases(model, family, self.kinds) if compensate else []
        self.all_groups = build_groups(model, family, self.kinds)
        self.groups: list[UnitGroup] = check_targets(self.all_groups, params, model)
        self.counts = allowed_counts(model, family, {g.kind for g in self.all_groups})
        self.routing = Routing()  # hooks only once experts are removed

    def select(self, params: Mapping[str, Tensor], layouts, gran, scores: dict[str, Tensor],
               masks: Mapping[str, Tensor], how: Selection) -> dict[str, Tensor]:
        """New target masks (see :func:`.units.select_units`; the units sum the per-weight scores themselves, so
        ``layouts`` and ``gran`` are not needed). ConfigError when a block would keep fewer experts than a token
        is routed to (top-k)."""
        new = select_units(self.groups, params, scores, masks, how, self.family.layers, self.expert_score,
                           self.multiples, self.kind_sparsity, self.reader_dim, self.counts)
        k = top_k(self.model)
        short = [(g, int((~removed_units(g, new)).sum())) for g in self.groups if g.kind == "experts"]
        short = [(g, kept) for g, kept in short if k is not None and kept < k]
        if short:
            raise ConfigError(f"{short[0][0].name} would keep {short[0][1]} experts, fewer than the {k} each token "
                              f"is routed to (num_experts_per_tok): prune a smaller share of the experts")
        return new

    def compensation(self, params: Mapping[str, Tensor], old: Mapping[str, Tensor], new: Mapping[str, Tensor],
                     stats) -> dict[str, Tensor]:
        """``{reader bias: amount}`` absorbing the mean contribution of the MLP channels and heads ``new``
        removes that ``old`` kept (:func:`.bias.compensation`; ``stats`` with kind ``sums`` of the readers)."""
        return compensation(self.groups, params, old, new, stats, 0 if self.family.transposed else 1)

    def removed(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{group name: removed unit indices}`` of the groups that lost units."""
        out = {}
        for g in self.groups:
            gone = removed_units(g, masks)
            if gone.any():
                out[g.name] = gone.nonzero().flatten()
        return out

    def companion_masks(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keep-masks of removed units' biases, norm entries and embedding columns (False: held at zero); the
        routers route around removed experts from now on (:class:`.experts.Routing`)."""
        self.routing.update(self.model, self.removed_experts(masks))
        return companion_masks(self.groups, masks, masks, dict(self.model.named_parameters()))

    def removed_experts(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{router name: removed expert indices}`` of the blocks that lost experts."""
        out = {f"{self.family.layers}.{g.block}.{router_name(self.family)}": removed_units(g, masks).nonzero().flatten()
               for g in self.groups if g.kind == "experts"}
        return {k: v for k, v in out.items() if len(v)}

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
                      example_inputs: Inputs | None = None, expert_score: str = "criterion",
                      round_to: int = 1, kind_sparsity: Mapping[str, float] | None = None,
                      score_from: str = "all", compensate: bool = False) -> TransformerUnits | None:
    """:class:`TransformerUnits` of ``model`` when it is a transformer of a known layout, else None."""
    fam = family_of(model)
    return None if fam is None else TransformerUnits(model, fam, params, kinds, example_inputs, expert_score,
                                                     round_to, kind_sparsity, score_from, compensate)


def width_multiples(model: nn.Module, round_to: int = 1) -> dict[str, int]:
    """The multiple each kind's kept width must be: ``round_to`` for MLP channels; for the hidden size also
    the attention heads (transformers' configs refuse a hidden size they do not divide: LLaMA's, GPT-2's).
    Heads, experts and blocks are counts, not widths: 1."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1
    return {"mlp": round_to, "hidden": math.lcm(round_to, int(heads))}


def allowed_counts(model: nn.Module, family: Family, kinds: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The key-value group counts a block may keep so that the attention heads still divide the hidden size,
    which transformers' configs require (LLaMA's refuses 64 with 3 heads): with the hidden size kept as it is,
    every count g whose g x (heads per group) divides it; with the hidden size pruned too (a multiple of the
    original heads, :func:`width_multiples`), the divisors of the group count. ``{}`` without ``heads``."""
    if "heads" not in kinds or "heads" not in dict(family.fields):
        return {}
    heads, kv, _ = attention_shape(model, family)
    r, hidden = heads // kv, int(getattr(model.config, "hidden_size", 0) or 0)
    fits = [g for g in range(1, kv + 1) if (kv % g == 0 if "hidden" in kinds else hidden % (g * r) == 0)]
    return {} if len(fits) == kv else {"heads": tuple(fits)}

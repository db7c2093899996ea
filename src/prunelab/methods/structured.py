"""Channel pruning methods whose result shrinks into a smaller dense model: ``l1_filter`` and ``slimming``.

``l1_filter`` (Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017):
filters (output channels) ranked by L1 norm, a fraction removed per layer: the same in every layer
(uniform), per layer by name (``allocation: {name: explicit, sparsities: {...}}``), or one of the paper's
named configurations as ``preset`` (see :data:`PRESETS`; the layer numbering counts conv layers from 1, as
Li et al. do). With a preset the run's ``sparsity`` only scales a schedule; the preset sets the amounts.

``slimming`` (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017):
channels ranked by |gamma| of the BatchNorm after each conv, one global threshold removing ``sparsity`` of
all channels (not weights), keeping at least one channel per layer (a layer whose every |gamma| falls under
the threshold would cut the network in two). The sparsity training (s * sign(gamma) added to the BatchNorm scale gradients)
is the training option ``bn_l1`` of the dense stage.

Both set ``channels``: removed channels' biases and BatchNorm entries are held at zero, so the masked
model equals the shrunk one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..registry import check_count
from ..errors import ConfigError
from .base import METHODS, Method


def _vgg16_a() -> dict[str, float]:
    """VGG-16-A: conv 1 and the last six convs (8-13) keep half their filters."""
    from ..models.vgg import CONFIGS

    out, pos, conv = {}, 0, 0
    for v in CONFIGS["vgg16"]:
        if v == "M":
            pos += 1
            continue
        conv += 1
        if conv == 1 or conv >= 8:
            out[f"features.{pos}.weight"] = 0.5
        pos += 3  # conv, BatchNorm, ReLU
    return out


def _resnet(depth: int, ratios: list[float], skip: list[int]) -> dict[str, float]:
    """The first conv of each residual block pruned by its stage's ratio, except the skipped layers.

    Layer numbers count convs from 1 (the stem is layer 1), so block b's first conv is layer 2 + 2b.
    """
    n = (depth - 2) // 6
    out = {}
    for b in range(3 * n):
        ratio = ratios[b // n]
        if ratio > 0 and 2 + 2 * b not in skip:
            out[f"layers.{b}.conv1.weight"] = ratio
    return out


# Li et al. 2017, Table 1 and section 4.2; the skipped layers are the ones the paper found sensitive.
PRESETS = {
    "vgg16_a": _vgg16_a,
    "resnet56_a": lambda: _resnet(56, [0.1, 0.1, 0.1], [16, 20, 38, 54]),
    "resnet56_b": lambda: _resnet(56, [0.6, 0.3, 0.1], [16, 18, 20, 34, 38, 54]),
    "resnet110_a": lambda: _resnet(110, [0.5, 0.0, 0.0], [36]),
    "resnet110_b": lambda: _resnet(110, [0.5, 0.4, 0.3], [36, 38, 74]),
}


@METHODS.register("l1_filter")
@dataclass
class L1Filter(Method):
    """L1-norm filter pruning (Li et al. 2017): which output channels go, coupled channels together.

    Filters ranked by the L1 norm of their weights, the same fraction per layer, chosen per group of coupled
    channels (:mod:`prunelab.structure.coupling`); ``preset`` names the paper's per-network layer choices."""

    criterion: Any = "magnitude"
    granularity: Any = "filter"
    allocation: Any = "uniform"
    selector: Any = "topk"
    channels: bool = True
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ConfigError(f"unknown l1_filter preset {self.preset!r}; valid: {', '.join(PRESETS)}")
            self.allocation = {"name": "explicit", "sparsities": PRESETS[self.preset]()}
        super().__post_init__()

    @property
    def default_targets(self) -> dict:
        return {"keep_last_dense": True}  # the classifier's outputs are the classes


@METHODS.register("slimming")
@dataclass
class Slimming(Method):
    """Network Slimming (Liu et al. 2017): which channels go, by the |gamma| of the BatchNorm after each layer.

    One global threshold over the channels' BatchNorm scales (allocation ``global`` counting groups, at least
    one channel kept per layer), chosen per group of coupled channels."""

    criterion: Any = "bn_scale"
    granularity: Any = "filter"
    allocation: Any = "global_groups"
    selector: Any = "topk"
    channels: bool = True

    def __post_init__(self) -> None:
        if self.allocation == "global_groups":
            self.allocation = {"name": "global", "unit": "groups", "min_keep": 1}
        super().__post_init__()

    @property
    def default_targets(self) -> dict:
        return {"module_types": ["Conv1d", "Conv2d", "Conv3d"]}

    def before_prune(self, view, ctx) -> dict:
        """The scale of the BatchNorm after each pruned layer, for the ``bn_scale`` criterion."""
        graph = view.structure
        gammas = {}
        for name in view.params:
            layer = name.rsplit(".", 1)[0]
            norm = graph.norm_after.get(layer)
            if norm is None:
                raise ConfigError(f"slimming needs a BatchNorm right after every pruned layer; {layer} has none "
                                  "(exclude it with targets.exclude)")
            gammas[name] = graph.modules[norm].weight.detach()
        return {"bn_scales": gammas}


@METHODS.register("transformer_units")
@dataclass
class TransformerUnits(Method):
    """Units of structure of a Hugging Face transformer (:mod:`prunelab.structure`): MLP channels, key-value
    groups with their query heads, the hidden size, whole blocks, ``sparsity`` of each kind's units removed
    (the same width in every block, so the result is a standard config), ranked by the summed scores of each
    unit's weights: ``activation`` (Minitron's mean |activation|, from calibration), ``taylor`` (first-order,
    |w dL/dw| summed, as LLM-Pruner's element-wise estimate) or ``magnitude`` (L1, as Li et al.'s filters).
    Blocks (``depth``) are ranked by ``depth_score``: ``influence`` (default; ShortGPT's 1 - cos(input, output)
    of each block over the calibration tokens, which then come to the method whatever its criterion) or
    ``criterion`` (the summed scores of the block's weights). Experts (``units: [experts]``, mixture-of-experts
    layouts) are ranked by ``expert_score``: ``reap`` (default; Lasby et al. 2025: router weight x expert output
    norm, summed over the calibration tokens routed to each expert), ``frequency`` (tokens routed to it) or
    ``criterion`` (``magnitude`` of its tensors); a removed expert is never routed to (:mod:`prunelab.structure.experts`).
    ``round_to``: every width a multiple of it (MLP channels, hidden size; the keep-count rounded down, as
    Torch-Pruning's ``round_to``, never below one multiple): 8 for tensor cores, 64-256 for llama.cpp's k-quants,
    whose blocks are 256 wide (a width of 576 left 26 of 48 tensors in a larger fallback format). The hidden size
    is always a multiple of the attention heads, which transformers' configs require (a shrunk model whose hidden
    size is not could not be saved). ``kind_sparsity``: a budget per kind, e.g. ``{mlp: 0.5, heads: 0.25}`` (the
    share of each kind's units removed by the schedule's end; kinds not named take ``sparsity``): one sparsity
    for every kind removed a key-value group of two from every block. ``prunelab export RUN --format hf``
    writes the smaller model as the same transformers class. ``criterion: fluctuation`` with ``score_from:
    readers`` ranks units as FLAP does (An et al. 2024: the variance of the channel the down or output projection
    reads, times its column's squared norm); ``compensate: bias`` adds FLAP's bias compensation (the mean of what a
    removed unit gave its reader, moved into the reader's bias; :mod:`prunelab.structure.bias`), giving LLaMA-style
    models the ``mlp_bias`` / ``attention_bias`` their config states, refused where the config cannot."""

    criterion: Any = "activation"
    granularity: Any = "filter"
    allocation: Any = "uniform"
    selector: Any = "topk"
    channels: bool = True
    units: Any = ("mlp", "heads")
    depth_score: str = "influence"
    expert_score: str = "reap"
    samples: int = 128  # calibration windows for block influence and expert routing (activation has its own)
    round_to: int = 1  # widths kept a multiple of this (see above)
    kind_sparsity: Any = None  # {kind: share of its units removed}, e.g. {mlp: 0.5, heads: 0.25}; others: sparsity
    score_from: str = "all"  # "readers": MLP channels and heads scored by the layers that read them (FLAP)
    compensate: str = "none"  # "bias": FLAP's bias compensation of removed MLP channels and heads
    output_layer: ClassVar[bool] = False  # the output layer's rows are the vocabulary: never a unit

    def __post_init__(self) -> None:
        from ..structure import KINDS

        units = [self.units] if isinstance(self.units, str) else self.units
        if not isinstance(units, (list, tuple)) or not units or not all(u in KINDS for u in units) \
                or len(set(units)) != len(units):
            raise ConfigError(f"transformer_units units are a list of distinct {', '.join(KINDS)}; got {self.units!r}")
        self.units = tuple(units)
        if self.granularity != "filter":
            raise ConfigError("transformer_units chooses whole units of structure: its granularity is filter, "
                              f"got {self.granularity!r}")
        if self.depth_score not in ("influence", "criterion"):
            raise ConfigError(f"transformer_units depth_score is influence or criterion, got {self.depth_score!r}")
        if self.expert_score not in ("reap", "frequency", "criterion"):
            raise ConfigError(f"transformer_units expert_score is reap, frequency or criterion, got {self.expert_score!r}")
        check_count("transformer_units samples", self.samples)
        if self.score_from not in ("all", "readers"):
            raise ConfigError(f"transformer_units score_from is all or readers, got {self.score_from!r}")
        if self.compensate not in ("none", "bias"):
            raise ConfigError(f"transformer_units compensate is none or bias, got {self.compensate!r}")
        if self.compensate == "bias" and not {"mlp", "heads"} & set(self.units):
            raise ConfigError("compensate: bias moves removed MLP channels' and heads' mean into their readers' "
                              f"biases; units {', '.join(self.units)} have neither")
        if self.kind_sparsity is not None:
            ks = self.kind_sparsity
            if not isinstance(ks, dict) or not all(k in self.units for k in ks) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in ks.values()):
                raise ConfigError(f"transformer_units kind_sparsity maps some of its units ({', '.join(self.units)}) "
                                  f"to a share in [0, 1), got {ks!r}")
            self.kind_sparsity = {k: float(v) for k, v in ks.items()}
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or not 1 <= self.round_to <= 4096:
            raise ConfigError(f"transformer_units round_to is a whole number from 1 to 4096 (8, 64, 128, 256 for "
                              f"runtimes), got {self.round_to!r}")
        if self.units == ("experts",) and self.criterion == "activation":
            self.criterion = "magnitude"  # the default criterion reads inputs no hook sees for fused experts
        super().__post_init__()
        if "experts" in self.units and self.criterion_.needs().calibration is not None:
            raise ConfigError(f"criterion {self.criterion_.registered_name} reads every target's inputs, which no "
                              "hook sees for fused experts: with units experts use criterion magnitude (experts are "
                              "ranked by expert_score)")

    def needs(self):
        """The criterion's needs; with depth ranked by influence, one calibration pass that measures it too."""
        from dataclasses import replace

        from ..calibration.request import Calibration

        need = self.criterion_.needs()
        extra = ({"influence"} if "depth" in self.units and self.depth_score == "influence" else set()) | \
            ({"routing"} if "experts" in self.units and self.expert_score != "criterion" else set()) | \
            ({"sums"} if self.compensate == "bias" else set())
        if not extra:
            return need
        cal = need.calibration
        if cal is None:
            return replace(need, calibration=Calibration(self.samples, (frozenset(extra),)))
        return replace(need, calibration=Calibration(cal.samples, (cal.passes[0] | extra,) + cal.passes[1:],
                                                     cal.sequential))

    def shifts(self, view, ctx, masks):
        """FLAP's bias compensation of the units ``masks`` removes (``compensate: bias``), else none."""
        if self.compensate != "bias":
            return {}
        return view.structure.compensation(view.params, view.masks, masks, ctx.input_stats)

    @property
    def unit_kinds(self) -> tuple[str, ...]:
        """The kinds of units of structure this method removes (read by :func:`prunelab.structure.structure_for`)."""
        return self.units

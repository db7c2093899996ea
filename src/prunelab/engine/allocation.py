"""Allocation: how many groups survive in each tensor.

``keep_counts(layers, sparsity, final_sparsity)`` returns integer keep-counts, in groups, per tensor.
The one rounding rule: ``keep = floor(density * n + 0.5)`` (nearest integer, halves up), applied to the
number of groups n of a tensor (of a block, for per-block granularities), so achieved sparsity is within
half a group of the request. Global allocations round the total once and then share it exactly.
"""
from __future__ import annotations

import fnmatch
import re
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry, check_fraction
from .topk import topk_counts


@dataclass
class LayerGroups:
    """One tensor as the allocation sees it."""

    name: str
    shape: tuple[int, ...]
    blocks: int            # B
    groups: int            # G, groups per block
    group_size: int        # elements per group
    per_block: bool
    scores: Tensor | None = None  # (B, G) group scores, -inf for pruned groups (global allocation only)
    threshold: float | None = None  # set by allocations that found a score threshold (a selector hint)
    members: tuple[str, ...] = ()  # other tensors chosen with this one (coupled channels); named rules match them

    @property
    def numel(self) -> int:
        return self.blocks * self.groups * self.group_size


def round_keep(density: float, n: int) -> int:
    """The rounding rule: nearest integer, halves up, clamped to [0, n]."""
    return max(0, min(n, math.floor(density * n + 0.5)))


def _uniform_keep(layer: LayerGroups, density: float) -> int:
    if layer.per_block:
        return layer.blocks * round_keep(density, layer.groups)
    return round_keep(density, layer.blocks * layer.groups)


class Allocation:
    """How many groups survive in each set: the allocation's one question.

    ``keep_counts(layers, sparsity, final_sparsity)`` gets every set of one pass (a tensor, a coupled channel
    group, a block's units: :class:`LayerGroups`) and returns ``{name: groups kept}``, integers within
    [0, groups] by the module's rounding rule, the total matching ``sparsity`` over the sets' weights where the
    allocation is global. ``needs_scores``: True when it reads the sets' group scores (a global threshold);
    otherwise they are not built. It may record a score threshold on a set (``threshold``, a selector's hint)
    and must not change anything else of its input. The engine asks it in one place
    (:func:`prunelab.engine.loop.budget`); a new allocation is registered with ``@ALLOCATIONS.register(name)``
    and tested by ``tests/engine/test_contracts.py`` without a line added."""

    needs_scores = False

    def keep_counts(self, layers: list[LayerGroups], sparsity: float, final_sparsity: float) -> dict[str, int]:
        """``{set name: groups kept}`` for this pass (see the class docstring)."""
        raise NotImplementedError


ALLOCATIONS: Registry[Allocation] = Registry("allocation", Allocation)


@ALLOCATIONS.register("uniform")
@dataclass
class Uniform(Allocation):
    """The same sparsity in every tensor (layerwise pruning)."""

    def keep_counts(self, layers, sparsity, final_sparsity):
        return {l.name: _uniform_keep(l, 1 - sparsity) for l in layers}


@ALLOCATIONS.register("global")
@dataclass
class Global(Allocation):
    """One threshold across all tensors on per-element scores (group scores divided by group size).

    Keeps exactly ``floor(density * total + 0.5)`` elements for element granularity; for groups, the
    highest-scoring groups whose sizes add up closest to that number. Not defined for per-block patterns.
    ``unit="groups"``: the budget counts groups instead and ranks them by their own score, not per element
    (Network Slimming's "prune 70% of the channels" by one threshold on |gamma|); ``min_keep`` then keeps at
    least that many groups in every tensor.

    ``floor`` (unit "elements"): one threshold can empty whole layers, a classifier's whole output (the logits
    then the same for every input); ``"rows"`` (default) keeps the best-scoring alive element of every output
    row of an element-wise tensor, and at least one group of any other, so no layer and no output unit is
    emptied; ``"layer"`` only the latter; ``"none"`` lets the threshold fall where it falls. The floor changes
    nothing but the rows that would be emptied (a row's best element is below the threshold only when all of
    it is): their best element is scored as the highest score of the call, inside the same budget.
    """

    needs_scores = True
    unit: str = "elements"
    min_keep: int = 0  # with unit "groups": never keep fewer groups in a tensor (a layer emptied cuts the model)
    floor: str = "rows"

    def __post_init__(self):
        if self.unit not in ("elements", "groups"):
            raise ConfigError(f"global allocation unit must be 'elements' or 'groups', got {self.unit!r}")
        if self.floor not in ("rows", "layer", "none"):
            raise ConfigError(f"global allocation floor must be 'rows', 'layer' or 'none', got {self.floor!r}")
        if self.min_keep < 0 or (self.min_keep and self.unit != "groups"):
            raise ConfigError("global allocation min_keep must be >= 0 and needs unit: groups")

    def keep_counts(self, layers, sparsity, final_sparsity):
        if any(l.per_block for l in layers):
            raise ConfigError("global allocation cannot be combined with a per-block granularity (N:M, window)")
        if self.unit == "groups":
            k = round_keep(1 - sparsity, sum(l.blocks * l.groups for l in layers))
            counts, _ = topk_counts([l.scores.reshape(-1) for l in layers], k)
            # the floor may keep a few groups more than the budget; it only acts where a tensor would be emptied
            return {l.name: max(c, min(self.min_keep, l.blocks * l.groups)) for l, c in zip(layers, counts)}
        floor = self._raise_floor(layers) if self.floor != "none" else {}
        return {n: max(c, floor.get(n, 0)) for n, c in self._element_counts(layers, sparsity).items()}

    def _element_counts(self, layers, sparsity):
        total = sum(l.numel for l in layers)
        k_elems = round_keep(1 - sparsity, total)
        if all(l.group_size == 1 for l in layers):
            counts, threshold = topk_counts([l.scores.reshape(-1) for l in layers], k_elems)
            for l in layers:  # usually each tensor's own k-th largest too: spares the selector a search
                l.threshold = threshold
            return {l.name: c for l, c in zip(layers, counts)}
        per_elem = torch.cat([(l.scores.reshape(-1).double() / l.group_size) for l in layers])
        sizes = torch.cat([torch.full((l.blocks * l.groups,), l.group_size, dtype=torch.int64) for l in layers])
        owner = torch.cat([torch.full((l.blocks * l.groups,), i, dtype=torch.int64) for i, l in enumerate(layers)])
        order = per_elem.argsort(descending=True, stable=True)
        csum = sizes[order].cumsum(0)
        take = int((csum <= k_elems).sum())
        if take < len(order) and abs(int(csum[take]) - k_elems) < abs(k_elems - (int(csum[take - 1]) if take else 0)):
            take += 1  # the group crossing the budget brings the total closer to it
        kept_owner = owner[order[:take]]
        counts = torch.bincount(kept_owner, minlength=len(layers))
        return {l.name: int(counts[i]) for i, l in enumerate(layers)}

    def _raise_floor(self, layers: list[LayerGroups]) -> dict[str, int]:
        """{tensor: groups the floor keeps}; a budget smaller than the floor is exceeded by the difference."""
        top = _top_of(layers)
        return {} if top is None else {l.name: _floor_rows(l, self.floor == "rows", top) for l in layers}


def _top_of(layers: list[LayerGroups]) -> float | None:
    finite = [t.max() for l in layers if (t := l.scores[torch.isfinite(l.scores)]).numel()]
    return float(torch.stack(finite).max()) if finite else None


def _floor_rows(layer: LayerGroups, rows: bool, top: float) -> int:
    """Score the best alive element of each output row (``rows``, element-wise tensors) or the best alive group
    of the tensor as ``top``, in place (see :class:`Global`); returns how many it raised."""
    gs = layer.scores
    by_row = rows and len(layer.shape) >= 2 and layer.group_size == 1 and layer.blocks == 1
    view = gs.reshape(layer.shape[0], -1) if by_row else gs.reshape(1, -1)
    best = view.max(dim=1)
    alive = torch.isfinite(best.values) & (best.values > 0)  # an all-zero row gains nothing by a kept zero
    view[alive.nonzero().flatten(), best.indices[alive]] = top
    return int(alive.sum())


@ALLOCATIONS.register("erk")
@dataclass
class ERK(Allocation):
    """Erdos-Renyi-Kernel (Evci et al., 2020): density proportional to sum(shape) / prod(shape).

    Layers whose density would exceed 1 are kept dense and the rest rescaled so the overall density is met.
    """

    def keep_counts(self, layers, sparsity, final_sparsity):
        target = (1 - sparsity) * sum(l.numel for l in layers)
        raw = {l.name: sum(l.shape) / math.prod(l.shape) for l in layers}
        dense: set[str] = set()
        while True:
            budget = target - sum(l.numel for l in layers if l.name in dense)
            denom = sum(raw[l.name] * l.numel for l in layers if l.name not in dense)
            eps = budget / denom if denom > 0 else 0.0
            over = {l.name for l in layers if l.name not in dense and eps * raw[l.name] > 1}
            if not over:
                break
            dense |= over
        out = {}
        for l in layers:
            d = 1.0 if l.name in dense else max(0.0, eps * raw[l.name])
            out[l.name] = _uniform_keep(l, d)
        return out


@ALLOCATIONS.register("explicit")
@dataclass
class Explicit(Allocation):
    """Per-tensor sparsities ``{name or glob: sparsity}``; the first matching pattern wins. A group of coupled
    channels matches when any of its producers' weights does.

    Tensors no pattern matches get ``default`` (None = kept dense). Under a schedule, every layer's
    sparsity is scaled by (scheduled sparsity / final sparsity), so the dict is reached at the end.
    """

    sparsities: dict[str, float] = field(default_factory=dict)
    default: float | None = None

    def __post_init__(self):
        for k, v in self.sparsities.items():
            check_fraction(f"explicit sparsity for {k!r}", v)
        if self.default is not None:
            check_fraction("explicit default sparsity", self.default)

    def keep_counts(self, layers, sparsity, final_sparsity):
        scale = sparsity / final_sparsity if final_sparsity > 0 else 1.0
        unused = set(self.sparsities)
        out = {}
        for l in layers:
            s = self.default
            for pat, val in self.sparsities.items():
                if any(fnmatch.fnmatchcase(n, pat) for n in (l.name, *l.members)):
                    s = val
                    unused.discard(pat)
                    break
            out[l.name] = _uniform_keep(l, 1 - (s or 0.0) * scale)
        if unused:
            raise ConfigError(f"explicit sparsities name no prunable tensor: {', '.join(sorted(unused))}; "
                              f"prunable: {', '.join(l.name for l in layers)}")
        return out


@ALLOCATIONS.register("owl")
@dataclass
class OWL(Allocation):
    """Outlier-weighted layerwise sparsity (Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)", ICML 2024).

    Per block (the layers sharing a name up to their first numeric index, ``model.layers.3.``: a decoder
    block, as the authors group them; a layer without one is its own block), the outlier ratio D is the
    fraction of its elements whose score exceeds ``m`` times the block's mean score (with the Wanda criterion:
    |W| ||X||, the authors' setting). Densities are the target density plus the ratios scaled to [0, 2
    ``lam``] less their mean, so a block with more outliers keeps more: d_b = (1 - s) + 2 lam (D_b - min D) /
    (max D - min D) - mean(...): a spread of 2 lam with the target as their mean (not +-lam around it: the
    scaled ratios are shifted by their mean, not their midpoint). The authors' mean is unweighted (their blocks are
    equal); here every density is shifted by one constant found so that the kept total over blocks of any
    sizes is the target's, which is no shift for equal blocks. Each layer then keeps its block's density
    (rounded per layer, or per row for a per-row granularity). Written from the paper and the authors'
    ``prune_wanda_outlier`` (its ``check_outlier_mean`` and ratio scaling).
    """

    needs_scores = True
    m: float = 5.0
    lam: float = 0.08

    def __post_init__(self):
        if not (isinstance(self.m, (int, float)) and math.isfinite(self.m) and self.m > 0):
            raise ConfigError(f"owl m must be a positive number, got {self.m!r}")
        if not (isinstance(self.lam, (int, float)) and 0 <= self.lam <= 0.5):
            raise ConfigError(f"owl lam must be a number in [0, 0.5], got {self.lam!r}")

    def densities(self, layers: list[LayerGroups], sparsity: float) -> dict[str, float]:
        """{block: density} (see the class docstring)."""
        blocks: dict[str, list[LayerGroups]] = {}
        for l in layers:
            blocks.setdefault(block_of(l.name), []).append(l)
        ratio, size = {}, {}
        for b, ls in blocks.items():
            s = torch.cat([l.scores.reshape(-1).double() for l in ls])
            s = s[torch.isfinite(s)]  # pruned groups (-inf) are not part of the distribution
            ratio[b] = float((s > self.m * s.mean()).double().mean()) if s.numel() else 0.0
            size[b] = sum(l.numel for l in ls)
        lo, hi = min(ratio.values()), max(ratio.values())
        scaled = {b: 0.0 if hi == lo else 2 * self.lam * (r - lo) / (hi - lo) for b, r in ratio.items()}
        mean = sum(scaled.values()) / len(scaled)
        raw = {b: 1 - sparsity + v - mean for b, v in scaled.items()}
        target, total = (1 - sparsity) * sum(size.values()), sum(size.values())

        def kept(c):
            return sum(size[b] * min(1.0, max(0.0, d + c)) for b, d in raw.items())
        a, z = -1.0, 1.0  # kept(c) rises with c: bisect for the shift that keeps the target exactly
        for _ in range(60):
            mid = (a + z) / 2
            a, z = (mid, z) if kept(mid) < target else (a, mid)
        c = (a + z) / 2 if total else 0.0
        return {b: min(1.0, max(0.0, d + c)) for b, d in raw.items()}

    def keep_counts(self, layers, sparsity, final_sparsity):
        if any(l.scores is None for l in layers):
            raise ConfigError("owl allocation needs the criterion's scores of every layer")
        dens = self.densities(layers, sparsity)
        return {l.name: _uniform_keep(l, dens[block_of(l.name)]) for l in layers}


_BLOCK = re.compile(r"^(.*?\.\d+)\.")


def block_of(name: str) -> str:
    """The block of a tensor name: the name up to its first numeric index (``model.layers.3``), else itself."""
    m = _BLOCK.match(name)
    return m.group(1) if m else name

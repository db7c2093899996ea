"""Units of structure in transformer blocks: MLP channels, key-value groups, the hidden size and whole blocks.

Each unit kind is a set of :class:`UnitGroup`, a group being what the allocation counts and the selector
chooses from (one per block for ``mlp`` and ``heads``, one for the model for ``hidden`` and ``depth``). A unit
owns entries of several tensors (:class:`Part`: along one dimension of one parameter); dropping it sets all of
them to zero: the target weights through their masks, the rest (biases, norm entries, embeddings) as
*companions* held at zero, as :mod:`prunelab.structure.channels` holds a removed channel's bias. With every entry of a
unit at zero the masked model computes exactly what the model without it computes:

- ``mlp``: channel j of a block's MLP: row j of each up-side projection with its bias, column j of the down one;
- ``heads``: key-value group g with its r = heads / kv-heads query heads: those heads' q rows, group g's k and
  v rows (with biases), the query heads' columns of the output projection. Only where the config states the
  head size apart from the hidden size (LLaMA-style configs' ``head_dim``); in GPT-2 and OPT it is
  hidden / heads, so fewer heads would change it, and ``heads`` is refused there;
- ``hidden``: residual channel c: column c of every embedding and every reader of the stream (q, k, v,
  up-side projections, the output layer), row c of every writer (output and down projections) with its bias,
  entry c of every norm over the hidden size. The channel is zero all along the stream. An RMSNorm over the
  n kept of N channels then equals the masked one, whose sum of squares the zeros do not change, when its
  gain is scaled by sqrt(N / n) and its eps by N / n:
  g_c x_c / sqrt(S / N + eps) = g_c sqrt(N / n) x_c / sqrt(S / n + eps N / n), S the sum over kept channels.
  A LayerNorm's mean and variance do change (the zeros count), so ``hidden`` is refused through LayerNorm;
- ``experts``: expert e of a mixture-of-experts block: slab e of its fused expert tensors and row e of its
  router (:mod:`.experts`, whose routing-aware routers give a removed expert logit -inf, never chosen);
- ``depth``: block l: every weight in it. With its output and down projections (and biases) at zero a pre-norm
  block returns its input, so the block can go; post-norm blocks (OPT with ``do_layer_norm_before`` false)
  refuse it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..engine.allocation import LayerGroups
from ..engine.loop import Candidates, Selection, choose
from ..errors import ConfigError
from ..targets import is_hf_conv1d
from .experts import expert_count, expert_parts
from .families import Family, attention_shape, has_module

KINDS = ("mlp", "heads", "hidden", "depth", "experts")


@dataclass(frozen=True)
class Part:
    """Entries ``index[i]`` along ``dim`` of parameter ``param`` belong to unit ``units[i]``."""

    param: str
    dim: int
    index: Tensor   # (rows, per_row) long
    units: Tensor   # (rows,) long

    def keep(self, shape: Sequence[int], dropped: Tensor) -> Tensor:
        """A bool tensor of ``shape``: False at this part's entries of the ``dropped`` units (a (units,) bool)."""
        line = torch.ones(shape[self.dim], dtype=torch.bool)
        line[self.index[dropped[self.units]].reshape(-1)] = False
        view = [1] * len(shape)
        view[self.dim] = -1
        return line.reshape(view).expand(*shape)

    def per_unit(self, t: Tensor, reduce: str) -> Tensor:
        """(rows,) the sum (``reduce="sum"``) or any (``"any"``) of ``t``'s entries of each row of the part."""
        sel = t.index_select(self.dim, self.index.reshape(-1).to(t.device)).movedim(self.dim, 0)
        sel = sel.reshape(self.index.shape[0], -1)
        return sel.double().sum(1) if reduce == "sum" else sel.any(1)


@dataclass(frozen=True)
class UnitGroup:
    """``size`` units of one ``kind`` chosen together (``block``: the block they are in, None for the model)."""

    kind: str
    name: str
    size: int
    parts: tuple[Part, ...]
    block: int | None = None


def _weight_parts(model: nn.Module, module: str, dim_out: bool, index: Tensor, units: Tensor,
                  transposed: bool, bias: bool = True) -> list[Part]:
    """The parts of one Linear / Conv1D: its weight along the output (``dim_out``) or input dimension, and
    along the output dimension its bias."""
    m = model.get_submodule(module)
    dim = (1 if transposed else 0) if dim_out else (0 if transposed else 1)
    out = [Part(f"{module}.weight", dim, index, units)]
    if dim_out and bias and getattr(m, "bias", None) is not None:
        out.append(Part(f"{module}.bias", 0, index, units))
    return out


def _norm_parts(model: nn.Module, module: str, index: Tensor, units: Tensor) -> list[Part]:
    m = model.get_submodule(module)
    return [Part(f"{module}.{p}", 0, index, units) for p in ("weight", "bias") if getattr(m, p, None) is not None]


def build_groups(model: nn.Module, fam: Family, kinds: Sequence[str]) -> list[UnitGroup]:
    """The unit groups of ``kinds`` in ``model`` (a model of layout ``fam``); ConfigError for a kind the
    architecture cannot shrink exactly into its own config (see the module docstring)."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"units are {', '.join(KINDS)}; got {bad or list(kinds)}")
    for kind in kinds:
        why = why_not(model, fam, kind)
        if why:
            raise ConfigError(f"{why}; units this model can lose: {', '.join(supported_kinds(model, fam)) or 'none'}")
    tp = fam.transposed
    blocks = model.get_submodule(fam.layers)
    out: list[UnitGroup] = []
    for i, block in enumerate(blocks):
        pre = f"{fam.layers}.{i}."
        if "heads" in kinds:
            heads, kv, d = attention_shape(model, fam)
            r = heads // kv
            q = torch.arange(heads * d).reshape(kv, r * d)
            k = torch.arange(kv * d).reshape(kv, d)
            g = torch.arange(kv)
            if fam.qkv:  # one projection, rows q then k then v
                qkv = pre + fam.qkv
                parts = [p for off, idx in ((0, q), (heads * d, k), (heads * d + kv * d, k))
                         for p in _weight_parts(model, qkv, True, idx + off, g, tp)]
            else:
                parts = _weight_parts(model, pre + fam.q, True, q, g, tp) + _weight_parts(model, pre + fam.k, True, k, g, tp)
                parts += _weight_parts(model, pre + fam.v, True, k, g, tp)
            parts += _weight_parts(model, pre + fam.o, False, q, g, tp)
            out.append(UnitGroup("heads", f"{pre}{fam.o.rpartition('.')[0]}", kv, tuple(parts), i))
        if "mlp" in kinds:
            width = _mlp_width(model, fam, pre)
            j = torch.arange(width)
            parts = [p for u in fam.up for c in range(fam.up_chunks)  # a fused gate_up: chunk c's row j
                     for p in _weight_parts(model, pre + u, True, (j + c * width)[:, None], j, tp)]
            parts += _weight_parts(model, pre + fam.down, False, j[:, None], j, tp)
            out.append(UnitGroup("mlp", f"{pre}{fam.up[0].rpartition('.')[0] or fam.up[0]}", width, tuple(parts), i))
        if "experts" in kinds and has_module(block, fam.experts):  # slab e of the fused expert tensors with
            # router row e (:mod:`.experts`); a dense block among MoE ones has none
            parts = expert_parts(model, fam, pre, Part)
            out.append(UnitGroup("experts", f"{pre}{fam.experts}", expert_count(model, fam, pre), tuple(parts), i))
    if "hidden" in kinds:
        out.append(_hidden_group(model, fam, blocks))
    if "depth" in kinds:
        parts = []
        for i, block in enumerate(blocks):
            for n, p in block.named_parameters():
                parts.append(Part(f"{fam.layers}.{i}.{n}", 0, torch.arange(p.shape[0])[None], torch.tensor([i])))
        out.append(UnitGroup("depth", fam.layers, len(blocks), tuple(parts)))
    return out


def why_not(model: nn.Module, fam: Family, kind: str) -> str | None:
    """Why ``model`` (of layout ``fam``) cannot lose units of ``kind`` exactly into its own config (None: it can)."""
    if kind in dict(fam.refused):
        return f"a {fam.name} model cannot lose {kind} units exactly: {dict(fam.refused)[kind]}"
    if kind == "experts" and not fam.experts:
        return f"a {fam.name} model has no mixture-of-experts blocks, so it has no experts to remove"
    if kind == "mlp" and fam.experts:
        return (f"the MLP of a {fam.name} block is its experts: remove whole experts with units [experts] (an "
                "expert's own channels are not a unit)")
    if kind == "hidden" and fam.no_hidden:
        return f"the hidden size of a {fam.name} model cannot be cut exactly: {fam.no_hidden}"
    if kind == "heads" and not fam.head_dim_field:
        return (f"a {fam.name} config derives the head size from hidden_size / heads, so it cannot hold fewer heads "
                "of the same size")
    if kind == "depth" and (fam.post_norm or (fam.pre_norm and not getattr(model.config, fam.pre_norm, True))):
        why = "normalizes after each residual add" if fam.post_norm else f"has {fam.pre_norm} false"
        return f"this {fam.name} model {why}, so a block with zero outputs is not the identity"
    return None


def supported_kinds(model: nn.Module, fam: Family) -> tuple[str, ...]:
    """The unit kinds ``model`` can lose exactly (those :func:`build_groups` does not refuse)."""
    return tuple(k for k in KINDS if why_not(model, fam, k) is None)


def _mlp_width(model: nn.Module, fam: Family, pre: str) -> int:
    w = model.get_submodule(pre + fam.down).weight
    return int(w.shape[0] if fam.transposed else w.shape[1])


def _hidden_group(model: nn.Module, fam: Family, blocks: nn.ModuleList) -> UnitGroup:
    n = int(getattr(model.config, fam.field("hidden")))
    c = torch.arange(n)
    idx, tp = c[:, None], fam.transposed
    parts = [Part(f"{e}.weight", 1, idx, c) for e in fam.embeds]
    for i in range(len(blocks)):
        pre = f"{fam.layers}.{i}."
        readers = ((fam.qkv,) if fam.qkv else (fam.q, fam.k, fam.v)) + fam.up
        for r in readers:
            parts += _weight_parts(model, pre + r, False, idx, c, tp)
        for w in (fam.o, fam.down):
            if w:
                parts += _weight_parts(model, pre + w, True, idx, c, tp)
        if fam.experts:  # every expert reads the stream (gate_up_proj's last dim) and writes it (down_proj's)
            parts += [Part(f"{pre}{fam.experts}.gate_up_proj", 2, idx, c), Part(f"{pre}{fam.experts}.down_proj", 1, idx, c)]
        for norm in fam.norms:
            parts += _norm_parts(model, pre + norm, idx, c)
    if fam.final_norm and has_module(model, fam.final_norm):  # OPT without do_layer_norm_before has none
        parts += _norm_parts(model, fam.final_norm, idx, c)
    named = dict(model.named_parameters())  # a tied output layer is the embedding, already a part
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is not None and not any(head.weight is named.get(p.param) for p in parts):
        name = next(k for k, v in model.named_modules() if v is head)
        parts += _weight_parts(model, name, False, idx, c, False)
    return UnitGroup("hidden", "hidden", n, tuple(parts))


def unit_scores(g: UnitGroup, scores: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                only_dim: int | None = None) -> tuple[Tensor, Tensor]:
    """((size,) score, (size,) alive) of a group's units: the sum of the targets' scores over each unit's
    entries (with ``only_dim``, of the parts along that dimension only: the layers that read the unit, when it is
    their input dimension); a unit is alive while any of its target entries is."""
    score = torch.zeros(g.size, dtype=torch.float64)
    parts = [p for p in g.parts if only_dim is None or p.dim == only_dim]
    for p in parts or g.parts:  # a kind no layer reads (a block): all its parts
        if p.param in scores:
            score.index_add_(0, p.units, p.per_unit(scores[p.param], "sum").cpu())
    alive = _alive(g, masks)
    return score.float().masked_fill(~alive, float("-inf")), alive


def _alive(g: UnitGroup, masks: Mapping[str, Tensor]) -> Tensor:
    """(size,) bool: the units with a target entry alive in ``masks`` (masks of the targets only)."""
    alive = torch.zeros(g.size, dtype=torch.bool)
    for p in g.parts:
        if p.param in masks:
            alive.index_fill_(0, p.units[p.per_unit(masks[p.param], "any").cpu()], True)
    return alive


def removed_units(g: UnitGroup, masks: Mapping[str, Tensor]) -> Tensor:
    """(size,) bool: the units whose every target entry is pruned (a group with no target part: none)."""
    if not any(p.param in masks for p in g.parts):
        return torch.zeros(g.size, dtype=torch.bool)
    return ~_alive(g, masks)


def block_influence(layers: str, size: int, stats) -> Tensor | None:
    """(blocks,) ShortGPT's block influence, 1 - mean cos(input, output), from calibration statistics of kind
    ``influence`` (None when they are not there)."""
    found = [(stats or {}).get(f"{layers}.{i}") for i in range(size)]
    if not all(s is not None and getattr(s, "cos", None) is not None for s in found):
        return None
    return torch.stack([1 - s.cos.cpu()[0] / max(s.rows, 1) for s in found]).float()


def expert_scores(g: UnitGroup, stats, how: str) -> Tensor:
    """(experts,) scores of one experts module from the calibration's routing statistics: ``reap``, the mean over
    the tokens routed to an expert of router weight x ||expert output|| (Lasby et al. 2025, "REAP the Experts:
    Why Pruning Prevails for One-Shot MoE Compression"; an expert no token reached scores 0), or ``frequency``,
    how many tokens were routed to it."""
    s = (stats or {}).get(g.name)
    if s is None or getattr(s, "reap", None) is None:
        raise ConfigError(f"{g.name} has no routing statistics: calibrate before pruning experts by {how}")
    routed = s.routed.cpu()
    return (s.reap.cpu() / routed.clamp_min(1) if how == "reap" else routed).float()


def select_units(groups: list[UnitGroup], params: Mapping[str, Tensor], scores: Mapping[str, Tensor],
                 masks: Mapping[str, Tensor], how: Selection, layers: str = "",
                 expert_score: str = "criterion", multiples: Mapping[str, int] | None = None,
                 kind_sparsity: Mapping[str, float] | None = None,
                 reader_dim: int | None = None, counts: Mapping[str, tuple[int, ...]] | None = None
                 ) -> dict[str, Tensor]:
    """New masks of the targets after one pass over the unit groups: the allocation counts units per group,
    the selector keeps the highest-scoring alive ones, and every target entry of a dropped unit is pruned
    (masks only shrink: a pruned unit stays pruned). Blocks (``depth``) are ranked by their influence when
    the calibration measured it (``ctx.input_stats``, blocks named ``layers.i``), else by their summed scores;
    experts by ``expert_score`` (:func:`expert_scores`) unless it is ``criterion``. ``multiples``: per kind, the
    multiple its kept count is rounded down to (:func:`~prunelab.structure.transformer.width_multiples`).
    ``kind_sparsity``: per kind, the share of its units removed at the schedule's end (this event: that share
    scaled by the event's sparsity over the final one); the other kinds take the event's sparsity.
    ``reader_dim``: score MLP channels and heads from the layers that read them only (the weights' input
    dimension; FLAP's way), not from every part. ``counts``: per kind, the kept counts a config can hold
    (:func:`~prunelab.structure.transformer.allowed_counts`)."""
    sets = []
    for g in groups:
        score, alive = unit_scores(g, scores, masks, reader_dim if g.kind in ("mlp", "heads") else None)
        bi = block_influence(layers, g.size, how.ctx.input_stats) if g.kind == "depth" else None
        if g.kind == "experts" and expert_score != "criterion":
            bi = expert_scores(g, how.ctx.input_stats, expert_score)
        if bi is not None:
            score = bi.masked_fill(~alive, float("-inf"))
        per_unit = sum(params[p.param].numel() // params[p.param].shape[p.dim] * p.index.shape[1]
                       for p in g.parts if p.param in params) // max(g.size, 1)
        sets.append(Candidates(LayerGroups(g.name, (g.size,), 1, g.size, max(per_unit, 1), False),
                               score[None], alive[None], multiple=(multiples or {}).get(g.kind, 1),
                               allowed=(counts or {}).get(g.kind)))
    new = {n: m for n, m in masks.items()}
    chosen: list = [None] * len(groups)
    for kind in dict.fromkeys(g.kind for g in groups):  # one budget per kind (the allocation is uniform)
        at = [i for i, g in enumerate(groups) if g.kind == kind]
        for i, (_, kept) in zip(at, choose([sets[i] for i in at], _kind_how(how, (kind_sparsity or {}).get(kind)))):
            chosen[i] = kept
    for g, kept in zip(groups, chosen):
        dropped = ~kept[0].cpu()
        if not dropped.any():
            continue
        for p in g.parts:
            if p.param in params:
                m = new[p.param]
                new[p.param] = m & p.keep(tuple(m.shape), dropped).to(m.device)
    return new


def _kind_how(how: Selection, share: float | None) -> Selection:
    """``how`` for a kind removing ``share`` of its units by the schedule's end (None: ``how`` itself)."""
    if share is None:
        return how
    now = share if how.final_sparsity <= 0 else share * min(1.0, how.sparsity / how.final_sparsity)
    return replace(how, sparsity=now, final_sparsity=share)


def companion_masks(groups: list[UnitGroup], params: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                    named: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep-masks (False = held at zero) of the non-target entries of removed units: biases, norm entries,
    embedding columns."""
    out: dict[str, Tensor] = {}
    for g in groups:
        gone = removed_units(g, masks)
        if not gone.any():
            continue
        for p in g.parts:
            if p.param in params or p.param not in named:
                continue
            t = named[p.param]
            k = p.keep(tuple(t.shape), gone).to(t.device)
            out[p.param] = out[p.param] & k if p.param in out else k.clone()
    return out


def check_targets(groups: list[UnitGroup], params: Mapping[str, Tensor], model: nn.Module) -> list[UnitGroup]:
    """The groups whose every layer weight (of a Linear or Conv1D, not the output layer) is a target; the rest
    (embeddings, norms, biases, a router's or experts' raw tensors) are companions. ConfigError when none is."""
    layers = {f"{n}.weight" for n, m in model.named_modules()
              if (isinstance(m, nn.Linear) or is_hf_conv1d(m)) and not _is_output(model, m.weight)}
    ok = [g for g in groups if all(p.param in params for p in g.parts if p.param in layers)]
    if not ok:
        raise ConfigError("no unit of structure has all its weight matrices among the targets: widen targets "
                          "(or drop the exclusions) so whole channels, heads or blocks can go")
    return ok


def _is_output(model: nn.Module, p: Tensor) -> bool:
    head = getattr(model, "get_output_embeddings", lambda: None)()
    return head is not None and head.weight is p

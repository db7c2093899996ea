"""Coupling: channels that must go together across tensors are scored and chosen as one group.

A channel written by several layers (the branches of a residual add, a concatenation's inputs feeding one
BatchNorm ...) is removed only when every one of them drops it. Choosing rows layer by layer and hoping the
choices agree removes far less than asked (on ResNet-18 at 0.5, about 1 in 3 coupled channels). Here, as in
Torch-Pruning's group importance, a coupled channel's score is the sum of its producers' row scores, the
allocation counts channels per group (a group plays the part a tensor plays elsewhere, named after its
root layer's weight), the selector picks channels, and every producer's row of a dropped channel is pruned.

Only groups whose every producer is a prunable target and whose channels are removable (no LayerNorm,
GroupNorm or free parameter in the way: :attr:`prunelab.structure.channels.ChannelGroup.blockers`) take part; the other
targets keep their masks, and :func:`channel_report` says how many channels were out of reach and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from ..engine.allocation import LayerGroups
from ..engine.loop import Candidates, Selection, choose
from ..engine.topk import any_rows
from ..errors import ConfigError
from ..targets import Layout
from .channels import ChannelGraph
from .heads import AttentionHeads, attention_heads
from .recurrent import RecurrentLayer


@dataclass(frozen=True)
class CoupledChannels:
    """One prunable channel group: ``name`` (its root layer's weight), ``size`` channels, per producer weight the
    row of every channel, and the grouped convolution among its members, if any (see ``ChannelGroup.grouped``)."""

    name: str
    size: int
    rows: Mapping[str, Tensor]
    grouped: tuple[str, Tensor, int, int] | None = None
    head_dim: int | None = None


def coupled_groups(graph: ChannelGraph, params: Mapping[str, Tensor]) -> list[CoupledChannels]:
    """The removable groups whose every producer is a target, in the order of their first target."""
    order = {n: i for i, n in enumerate(params)}
    out = []
    for g in graph.groups:
        rows = {f"{layer}.weight": idx for layer, idx in g.producers.items()}
        if not rows or not g.removable or any(n not in params for n in rows):
            continue
        name = f"{g.root}.weight" if f"{g.root}.weight" in rows else next(iter(rows))
        out.append(CoupledChannels(name, g.size, rows, g.grouped[0] if g.grouped else None, g.head_dim))
    return sorted(out, key=lambda c: min(order[n] for n in c.rows))


def _head_view(a: AttentionHeads, scores: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(heads,) scores (sum over each head's q, k, v rows and out_proj columns; -inf for dropped heads) and alive
    flags of one attention."""
    inp, out = scores[a.in_proj].double(), scores[a.out_proj].double()
    score = torch.stack([inp[a.rows(h)].sum() + out[:, a.columns(h)].sum() for h in range(a.heads)]).float()
    alive = a.kept(masks)
    return score.masked_fill(~alive, float("-inf")), alive


def _heads_of(g: CoupledChannels) -> Tensor:
    """The head of every channel of an attention group (by the first projection's output row)."""
    return next(iter(g.rows.values())) // g.head_dim


def _conv_group_order(g: CoupledChannels) -> tuple[Tensor, int, int]:
    """For a group with a grouped convolution: the channel order that lays the channels out as (conv group,
    position) for a producer, (position, conv group) for a consumer; and the two sizes of that layout."""
    kind, idx, groups, channels = g.grouped
    per = channels // groups
    block, position = idx // per, idx % per
    if kind == "producer":
        return torch.argsort(block * per + position), groups, per
    return torch.argsort(position * groups + block), per, groups


def select_channels(groups: list[CoupledChannels], params: Mapping[str, Tensor], layouts: Mapping[str, Layout],
                    row_scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], how: Selection,
                    heads: list[AttentionHeads] = (), head_scores: Mapping[str, Tensor] | None = None,
                    recurrent: list[RecurrentLayer] = ()) -> dict[str, Tensor]:
    """New masks of the producers after one pass over the coupled channels and attention heads (other targets:
    unchanged); one allocation over both, so a head is a group like any other.

    ``row_scores``: per target, one score per output row (its (out, in, *kernel) view's row sums). Around a
    grouped convolution the choice keeps its structure: a producer's conv groups each lose the same number of
    channels; a consumer's lose the channels at the same positions (scored by the sum over its conv groups).
    ``heads``: ``nn.MultiheadAttention`` heads, scored by the sum of ``head_scores`` over their q, k, v rows and
    out_proj columns; a dropped head loses all of them. ``recurrent``: hidden units of recurrent modules, scored
    by the sum of their gate rows' scores; the count the allocation gives a module is split evenly over its
    layers and directions (one hidden size for all of them).
    """
    sets = [_channel_set(g, params, layouts, row_scores, masks) for g in groups]
    sets += [_head_set(a, head_scores, masks) for a in heads]
    sets += [_recurrent_set(r, params, row_scores, masks) for r in recurrent]
    new, revives = {}, how.selector.revives
    for c, kept in choose(sets, how):
        what = c.of
        if isinstance(what, RecurrentLayer):
            new.update(what.without(masks, kept.cpu(), revives))
        elif isinstance(what, AttentionHeads):
            new.update(_without_heads(what, masks, kept[0], revives))
        else:
            new.update(_without_channels(what, layouts, masks, _channels_kept(what, kept), revives))
    return new


@dataclass
class _Set(Candidates):
    of: object = None  # the coupled group, attention or recurrent module the set stands for


def _channel_set(g: CoupledChannels, params, layouts, row_scores, masks) -> _Set:
    score = sum(row_scores[n][idx].double() for n, idx in g.rows.items())
    alive = torch.zeros(g.size, dtype=torch.bool, device=score.device)
    for n, idx in g.rows.items():
        canon = layouts[n].canonical(masks[n])
        alive |= any_rows(canon)[idx.to(canon.device)]
    score = score.float().masked_fill(~alive, float("-inf"))
    per_channel = sum(layouts[n].canonical(params[n])[0].numel() for n in g.rows)
    shape = layouts[g.name].canonical_shape(tuple(params[g.name].shape))
    members = tuple(n for n in g.rows if n != g.name)
    if g.head_dim is not None:  # attention: choose whole heads, scored by the sum over their channels
        head = _heads_of(g)
        score = torch.zeros(g.size // g.head_dim, dtype=score.dtype).index_add_(0, head, score)
        alive = torch.zeros(g.size // g.head_dim, dtype=torch.long).index_add_(0, head, alive.long()) > 0
        per_channel *= g.head_dim
    elif g.grouped is not None and g.grouped[0] == "consumer":  # choose positions, shared by every conv group
        order, positions, blocks = _conv_group_order(g)
        score = score[order].reshape(positions, blocks).sum(1)
        alive = alive[order].reshape(positions, blocks).any(1)
        per_channel *= blocks
    layer = LayerGroups(g.name, shape, 1, score.numel(), per_channel, False, members=members)
    if g.grouped is not None and g.grouped[0] == "producer":  # the same count in every conv group
        order, blocks, per = _conv_group_order(g)
        return _Set(layer, score[None], alive[None], split=(blocks, per), order=order, of=g)
    return _Set(layer, score[None], alive[None], of=g)


def _channels_kept(g: CoupledChannels, kept: Tensor) -> Tensor:
    """(size,) kept channels of a group from the selector's choice over its heads, positions or channels."""
    if g.grouped is not None and g.grouped[0] == "producer":
        order, _, _ = _conv_group_order(g)
        out = torch.empty(g.size, dtype=torch.bool, device=kept.device)
        out[order] = kept.reshape(-1)
        return out
    kept = kept[0]
    if g.head_dim is not None:  # a kept head keeps all its channels
        return kept[_heads_of(g).to(kept.device)]
    if g.grouped is not None:  # consumer: a kept position keeps its channel in every conv group
        order, positions, blocks = _conv_group_order(g)
        expanded = torch.empty(g.size, dtype=torch.bool, device=kept.device)
        expanded[order] = kept[:, None].expand(positions, blocks).reshape(-1)
        return expanded
    return kept


def _without_channels(g: CoupledChannels, layouts, masks, kept: Tensor, revives: bool) -> dict[str, Tensor]:
    out = {}
    for n, idx in g.rows.items():
        canon = layouts[n].canonical(masks[n])
        rows = torch.ones(canon.shape[0], dtype=torch.bool, device=canon.device)
        rows[idx.to(canon.device)] = kept.to(canon.device)
        whole = rows.reshape(-1, *([1] * (canon.dim() - 1))).expand_as(canon)
        m = whole if revives else canon & whole  # a revived channel comes back whole
        out[n] = layouts[n].stored(m).contiguous()
    return out


def _head_set(a: AttentionHeads, head_scores, masks) -> _Set:
    score, alive = _head_view(a, head_scores, masks)
    layer = LayerGroups(a.in_proj, (a.heads, a.head_dim), 1, a.heads, 4 * a.head_dim * a.width, False,
                        members=(a.out_proj,))
    return _Set(layer, score[None], alive[None], of=a)


def _without_heads(a: AttentionHeads, masks, kept: Tensor, revives: bool) -> dict[str, Tensor]:
    in_mask, out_mask = masks[a.in_proj].clone(), masks[a.out_proj].clone()
    if revives:
        in_mask.fill_(True), out_mask.fill_(True)
    for h in (~kept).nonzero().flatten().tolist():
        in_mask[a.rows(h)] = False
        out_mask[:, a.columns(h)] = False
    return {a.in_proj: in_mask, a.out_proj: out_mask}


def _recurrent_set(r: RecurrentLayer, params, row_scores, masks) -> _Set:
    alive = r.alive(masks)
    score = r.scores(row_scores).masked_fill(~alive, float("-inf")).reshape(1, -1)
    name = r.weights(0)[0]
    per_unit = sum(params[n][0].numel() for n in r.weights(0))  # one row of each weight per gate
    layer = LayerGroups(name, tuple(alive.shape), 1, alive.numel(), per_unit * r.gates, False,
                        members=tuple(n for b in range(r.blocks) for n in r.weights(b) if n != name))
    return _Set(layer, score, alive, split=(r.blocks, r.hidden), of=r)


def channel_report(graph: ChannelGraph, params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
    """Channels of the model's layers: how many could be removed (``prunable``), how many are (``removed``),
    their ``sparsity``, and the channels out of reach with the reason (``blocked``: by type of the member in the
    way; ``untargeted``: a producer is not a target)."""
    removed = graph.removed(masks)
    prunable = n_removed = 0
    blocked: dict[str, int] = {}
    untargeted = 0
    for g in graph.groups:
        if not g.removable:
            for b in dict.fromkeys(g.blockers):
                blocked[b] = blocked.get(b, 0) + g.size
        elif any(f"{layer}.weight" not in params for layer in g.producers):
            untargeted += g.size
        else:
            prunable += g.size
            n_removed += len(removed.get(g.root, ()))
    heads = attention_heads(graph.model, params)
    kept = sum(int(a.kept(masks).sum()) for a in heads)
    total = sum(a.heads for a in heads)
    out = {"prunable": prunable, "removed": n_removed, "sparsity": n_removed / prunable if prunable else 0.0,
           "blocked": blocked, "untargeted": untargeted, "heads": {"prunable": total, "removed": total - kept}}
    if graph.recurrent:
        taking = {r.module for r in graph.recurrent_layers(params)}
        out["recurrent"] = {r.module: {"units": r.blocks * r.hidden, "removed": int((~r.alive(masks)).sum())
                                       if r.module in taking else 0,
                                       "kept_because": ", ".join(r.blockers) or (None if r.module in taking
                                                                                 else "a weight is not a target")}
                            for r in graph.recurrent}
    return out


class ChannelUnits(ChannelGraph):
    """Traced channels as units of structure (:class:`prunelab.structure.protocol.Units`): the coupled channel
    groups, ``nn.MultiheadAttention`` heads and recurrent hidden units of a :class:`ChannelGraph`, chosen through
    the one selection loop."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sets: dict = {}  # {target names: (coupled groups, attention heads, recurrent)}, found at first selection

    def select(self, params: Mapping[str, Tensor], layouts: Mapping[str, Layout], gran, scores: dict[str, Tensor],
               masks: Mapping[str, Tensor], how: Selection) -> dict[str, Tensor]:
        """:func:`select_channels` over the coupled groups, attention heads and recurrent units whose producers are
        all in ``params`` (found once per target set), from per-weight ``scores`` reduced to rows by ``gran``
        (consumed). ConfigError when there is nothing to remove whole."""
        groups, heads, recurrent = self._sets_for(params)
        head_scores = {n: scores[n] for a in heads for n in (a.in_proj, a.out_proj)}
        rows = {n: gran.group_scores(layouts[n].canonical(scores.pop(n)).float())[0] for n in params}
        return select_channels(groups, params, layouts, rows, masks, how, heads, head_scores, recurrent)

    def report(self, params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """The summary's channels (:func:`channel_report`)."""
        return channel_report(self, params, masks)

    def _sets_for(self, params: Mapping[str, Tensor]) -> tuple:
        key = tuple(params)
        if key not in self._sets:
            found = (coupled_groups(self, params), attention_heads(self.model, params), self.recurrent_layers(params))
            if not any(found):
                blocked = "; ".join(f"{r.module}: {', '.join(r.blockers)}" for r in self.recurrent if r.blockers)
                raise ConfigError("no group of coupled channels has all its producers among the targets (or every "
                                  "one feeds a normalization over channels), and no attention's heads or recurrent "
                                  "units are: this model has nothing to remove whole"
                                  + (f" (recurrent units kept: {blocked})" if blocked else ""))
            self._sets[key] = found
        return self._sets[key]

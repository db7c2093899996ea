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

from ..engine.allocation import Allocation, LayerGroups
from .heads import AttentionHeads, attention_heads
from .channels import ChannelGraph
from .recurrent import RecurrentLayer
from ..engine.criteria import Context
from ..errors import ConfigError
from ..engine.selection import Selector
from ..targets import Layout
from ..engine.topk import any_rows


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
                    row_scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], allocation: Allocation,
                    selector: Selector, sparsity: float, final_sparsity: float, ctx: Context,
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
    layers, views = [], {}
    for g in groups:
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
        views[g.name] = (score[None], alive[None])
        layers.append(LayerGroups(g.name, shape, 1, score.numel(), per_channel, False,
                                  score[None] if allocation.needs_scores else None, members=members))
    for a in heads:
        score, alive = _head_view(a, head_scores, masks)
        views[a.in_proj] = (score[None], alive[None])
        layers.append(LayerGroups(a.in_proj, (a.heads, a.head_dim), 1, a.heads, 4 * a.head_dim * a.width,
                                  False, score[None] if allocation.needs_scores else None, members=(a.out_proj,)))
    for r in recurrent:
        score = r.scores(row_scores)
        alive = r.alive(masks)
        score = score.masked_fill(~alive, float("-inf")).reshape(1, -1)
        name = r.weights(0)[0]
        per_unit = sum(params[n][0].numel() for n in r.weights(0))  # one row of each weight per gate
        views[name] = (score, alive)
        layers.append(LayerGroups(name, tuple(alive.shape), 1, alive.numel(), per_unit * r.gates, False,
                                  score if allocation.needs_scores else None,
                                  members=tuple(n for b in range(r.blocks) for n in r.weights(b) if n != name)))
    keep = allocation.keep_counts(layers, sparsity, final_sparsity)
    new = {}
    for r in recurrent:
        name = r.weights(0)[0]
        score, alive = views.pop(name)
        per = max(0, min(r.hidden, round(keep[name] / r.blocks)))
        kept = selector.select(score.reshape(r.blocks, r.hidden).clone(), alive, per * r.blocks, True, ctx, name)
        new.update(r.without(masks, kept.cpu(), selector.revives))
    for a, layer in zip(heads, layers[len(groups):]):
        score, alive = views.pop(a.in_proj)
        kept = selector.select(score.clone(), alive, keep[a.in_proj], False, ctx, a.in_proj, layer.threshold)[0]
        in_mask, out_mask = masks[a.in_proj].clone(), masks[a.out_proj].clone()
        if selector.revives:
            in_mask.fill_(True), out_mask.fill_(True)
        for h in (~kept).nonzero().flatten().tolist():
            in_mask[a.rows(h)] = False
            out_mask[:, a.columns(h)] = False
        new[a.in_proj], new[a.out_proj] = in_mask, out_mask
    for g, layer in zip(groups, layers):
        score, alive = views.pop(g.name)
        k = keep[g.name]
        if g.grouped is not None and g.grouped[0] == "producer":  # the same count in every conv group
            order, blocks, per = _conv_group_order(g)
            k_per = max(0, min(per, round(k / blocks)))
            chosen = selector.select(score[0][order].reshape(blocks, per).clone(),
                                     alive[0][order].reshape(blocks, per), k_per * blocks, True, ctx, g.name)
            kept = torch.empty(g.size, dtype=torch.bool, device=chosen.device)
            kept[order] = chosen.reshape(-1)
        else:
            kept = selector.select(score.clone(), alive, k, False, ctx, g.name, layer.threshold)[0]
            if g.head_dim is not None:  # a kept head keeps all its channels
                kept = kept[_heads_of(g).to(kept.device)]
            elif g.grouped is not None:  # consumer: a kept position keeps its channel in every conv group
                order, positions, blocks = _conv_group_order(g)
                expanded = torch.empty(g.size, dtype=torch.bool, device=kept.device)
                expanded[order] = kept[:, None].expand(positions, blocks).reshape(-1)
                kept = expanded
        for n, idx in g.rows.items():
            canon = layouts[n].canonical(masks[n])
            rows = torch.ones(canon.shape[0], dtype=torch.bool, device=canon.device)
            rows[idx.to(canon.device)] = kept.to(canon.device)
            whole = rows.reshape(-1, *([1] * (canon.dim() - 1))).expand_as(canon)
            m = whole if selector.revives else canon & whole  # a revived channel comes back whole
            new[n] = layouts[n].stored(m).contiguous()
    return new


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


def select_coupled(graph: ChannelGraph, params: Mapping[str, Tensor], layouts: Mapping[str, Layout], gran,
                   scores: dict[str, Tensor], masks: Mapping[str, Tensor], allocation: Allocation, selector: Selector,
                   sparsity: float, final_sparsity: float, ctx: Context) -> dict[str, Tensor]:
    """:func:`select_channels` over the graph's coupled groups and attention heads whose producers are all in
    ``params`` (found once per target set and kept on the graph), from per-weight ``scores`` reduced to rows by
    ``gran`` (consumed). ConfigError when there is nothing to remove whole."""
    key = tuple(params)
    if key not in graph.coupled:
        graph.coupled[key] = (coupled_groups(graph, params), attention_heads(graph.model, params),
                              graph.recurrent_layers(params))
        if not any(graph.coupled[key]):
            blocked = "; ".join(f"{r.module}: {', '.join(r.blockers)}" for r in graph.recurrent if r.blockers)
            raise ConfigError("no group of coupled channels has all its producers among the targets (or every one "
                              "feeds a normalization over channels), and no attention's heads or recurrent units "
                              "are: this model has nothing to remove whole"
                              + (f" (recurrent units kept: {blocked})" if blocked else ""))
    groups, heads, recurrent = graph.coupled[key]
    head_scores = {n: scores[n] for a in heads for n in (a.in_proj, a.out_proj)}
    rows = {n: gran.group_scores(layouts[n].canonical(scores.pop(n)).float())[0] for n in params}
    return select_channels(groups, params, layouts, rows, masks, allocation, selector, sparsity, final_sparsity, ctx,
                           heads, head_scores, recurrent)

"""Channel permutations for N:M: reorder a layer's input channels so that its N:M blocks keep more score.

N:M keeps n of every m consecutive input channels, so which channels share a block decides what can be kept.
RIA (Zhang et al., "Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models", ICLR
2024) reorders them before choosing: *channel reallocation* sorts the channels by their summed score and deals
them out so that block position k takes the k-th quantile (ascending for odd k, descending for even k, as the
authors' ``index[ii-1::m]``), and a *linear sum assignment* (their ``--lsa``) then moves, for each position in
turn, the channels at that position between blocks to maximise the kept score (scipy's
``linear_sum_assignment`` over a window of ``window`` blocks at a time, their ``--fast`` splitting). Written
from the paper and the authors' ``prune_ria``. Two deviations: the dealt-out order is kept only when it keeps
at least the identity's score (the authors keep it always; the assignment can then only add), and the
permutation is made real instead of left to the runtime: the authors zero the weights in the original order,
so their masks are N:M only after a permutation the deployed model must apply to its inputs; here the channels
are moved in the model itself, which computes the same function, and the stored masks are N:M as they stand.

A permutation is real when the channels' producers move with them. That holds for the MLP channels of a
transformer block (:mod:`prunelab.structure`: the up-side projections' rows and the down projection's
columns, every one of them a target), so their down projection is the layer permuted; layers whose inputs are
the residual stream (every reader shares one order) or attention heads keep their order. An MLP with biases
or targets outside this decision keeps its order too, and the event's record says why.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..errors import ConfigError

MODES = ("none", "heuristic", "lsa")


def kept_score(scores: Tensor, n: int, m: int) -> Tensor:
    """The total of the n largest scores in every block of m consecutive columns of ``scores`` (rows, cols)."""
    r, c = scores.shape
    return scores.reshape(r, c // m, m).topk(n, dim=2).values.sum()


def reallocation(scores: Tensor, m: int) -> Tensor:
    """RIA's channel reallocation: column order whose block position k holds the k-th quantile of the columns'
    summed scores (ascending at odd k, descending at even k, counting from 1)."""
    c = scores.shape[1]
    order = scores.sum(0).argsort(stable=True)
    index = torch.empty_like(order)
    for k in range(m):
        part = order[c * k // m: c * (k + 1) // m]
        index[k::m] = part if k % 2 == 0 else part.flip(0)
    return index


def assignment(scores: Tensor, index: Tensor, n: int, m: int, window: int = 256) -> Tensor:
    """``index`` improved by linear sum assignment: for each block position p, the channels at p are reassigned
    among the blocks of each window to maximise the kept score; never lower than ``index``'s."""
    from scipy.optimize import linear_sum_assignment

    r, c = scores.shape
    index = index.clone()
    blocks = c // m
    for p in range(m):
        for start in range(0, blocks, window):
            nb = min(window, blocks - start)
            cols = index[start * m:(start + nb) * m]
            blk = scores[:, cols].reshape(r, nb, m).permute(1, 0, 2)  # (nb, rows, m)
            cand = blk[:, :, p]                                        # (nb, rows): each block's channel at p
            value = torch.empty(nb, nb, dtype=torch.float64)
            for j in range(nb):  # value[i, j]: block j's kept score with block i's channel at p
                trial = blk[j].unsqueeze(0).repeat(nb, 1, 1)
                trial[:, :, p] = cand
                value[:, j] = trial.topk(n, dim=2).values.sum((1, 2)).double().cpu()
            src, dst = linear_sum_assignment(value.numpy(), maximize=True)
            moved = cols.clone()
            moved[torch.as_tensor(dst) * m + p] = cols[torch.as_tensor(src) * m + p]
            index[start * m:(start + nb) * m] = moved
    return index


def search(scores: Tensor, n: int, m: int, mode: str = "lsa", window: int = 256) -> Tensor:
    """The column order for N:M of ``scores`` (rows, cols): ``heuristic`` RIA's reallocation, ``lsa`` with the
    assignment after it; the identity when neither keeps more."""
    s = scores.double()
    ident = torch.arange(s.shape[1], device=s.device)
    index = reallocation(s, m)
    if kept_score(s[:, index], n, m) < kept_score(s, n, m):
        index = ident
    if mode == "lsa":
        index = assignment(s, index, n, m, window)
    return index


def permuted_decision(method, view, ctx):
    """The Decision of ``ctx.group`` under an N:M granularity with ``permute``: each permutable MLP's channels
    reordered by :func:`search` on its down projection's scores (scores, statistics and weights moved alike),
    the pipeline's selection on the moved scores, and the moved weights as the Decision's values."""
    from ..methods.base import Decision
    from .loop import select_tensors
    from ..structure.families import family_of
    from ..structure.units import build_groups
    from .topk import all_true

    gran = method.granularity_
    names = tuple(ctx.group or view.params)
    params = {n: view.params[n].detach() for n in names}
    scores = method.criterion_.scores(params, ctx)
    fam = family_of(view.model)
    groups = []
    if fam is not None:
        try:
            groups = build_groups(view.model, fam, ["mlp"])
        except ConfigError:
            groups = []
    stats = dict(ctx.input_stats or {})
    values, record, skipped = {}, {}, {}
    for g in groups:
        down = f"{fam.layers}.{g.block}.{fam.down}.weight"
        if down not in params:
            continue
        why = next((f"{p.param} is not a target (it would have to move too)" for p in g.parts
                    if p.param not in view.params), None)
        why = why or next((f"{p.param} was decided in an earlier calibration group (sequential: false permutes it)"
                           for p in g.parts if p.param not in params), None)
        why = why or next((f"{n} was pruned before" for n in {p.param for p in g.parts}
                           if not all_true(view.masks[n])), None)
        if why:
            skipped[g.name] = why
            continue
        layout = view.layouts[down]
        order = search(layout.canonical(scores[down]).reshape(-1, g.size), gran.n, gran.m, gran.permute,
                       gran.window).cpu()
        before = float(kept_score(layout.canonical(scores[down]).reshape(-1, g.size).double(), gran.n, gran.m))
        for part in g.parts:
            src = part.index[order].reshape(-1)
            dst = part.index.reshape(-1)
            for t in (params, scores):
                moved = t[part.param].clone()
                moved.index_copy_(part.dim, dst.to(moved.device), t[part.param].index_select(part.dim, src.to(moved.device)))
                t[part.param] = moved
        after = float(kept_score(layout.canonical(scores[down]).reshape(-1, g.size).double(), gran.n, gran.m))
        if down in stats and stats[down] is not None:
            stats[down] = _moved_stats(stats[down], order)
        values.update({p.param: params[p.param] for p in g.parts})
        record[g.name] = round(after / before - 1, 6) if before else 0.0
    pctx = replace(ctx, input_stats=stats) if ctx.input_stats is not None else ctx
    dense = {n for n in names if all_true(view.masks[n])}
    masks = select_tensors(method, gran, params, view.layouts, scores, {n: view.masks[n] for n in names}, dense,
                           ctx.sparsity, ctx.final_sparsity, pctx)
    out = {"permuted": record} if record else {}
    if skipped:
        out["not_permuted"] = skipped
    return Decision(masks, values, out)


def _moved_stats(st, order: Tensor):
    """A layer's input statistics with its columns in ``order`` (a plain linear layer's: one row of columns)."""
    o = order.to(st.sq.device)
    return replace(st, sq=st.sq[..., o], sum=None if st.sum is None else st.sum[..., o],
                   gram=None if st.gram is None else st.gram[..., o, :][..., o])

"""N:M with a channel permutation made real: the decision of a method whose granularity is ``nm`` with ``permute``.

A permutation is real when the channels' producers move with them. That holds for the MLP channels of a
transformer block (:mod:`prunelab.structure`: the up-side projections' rows and the down projection's
columns, every one of them a target), so their down projection is the layer permuted; layers whose inputs are
the residual stream (every reader shares one order) or attention heads keep their order. An MLP with biases
or targets outside this decision keeps its order too, and the event's record says why. The search itself is
the engine's (:mod:`prunelab.engine.permutation`, RIA's channel reallocation and linear sum assignment).
"""
from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from ..engine.decisions import Decision
from ..engine.loop import Selection, select_tensors
from ..engine.permutation import kept_score, search
from ..engine.topk import all_true
from ..errors import ConfigError
from ..structure.recognize import family_of
from ..structure.units import build_groups


def permuted_decision(method, view, ctx):
    """The Decision of ``ctx.group`` under an N:M granularity with ``permute``: each permutable MLP's channels
    reordered by :func:`search` on its down projection's scores (scores, statistics and weights moved alike),
    the pipeline's selection on the moved scores, and the moved weights as the Decision's values."""
    gran = method.granularity_
    names = tuple(ctx.group or view.params)
    params = {n: view.params[n].detach() for n in names}
    scores = method.criterion_.scores(params, ctx)
    fam = family_of(view.model)
    if fam is None:  # refused at the first group, before any weight is written; otherwise plain N:M, silently
        raise ConfigError(f"permute: {gran.permute} moves the MLP channels of a transformer of a known layout "
                          f"(the only channels whose producers can move with them); {type(view.model).__name__} "
                          "has none: drop permute for plain N:M")
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
    how = Selection(method.allocation_, method.selector_, ctx.sparsity, ctx.final_sparsity, pctx)
    masks = select_tensors(gran, params, view.layouts, scores, {n: view.masks[n] for n in names}, dense, how)
    out = {"permuted": record} if record else {}
    if skipped:
        out["not_permuted"] = skipped
    return Decision(masks, values, out)


def _moved_stats(st, order: Tensor):
    """A layer's input statistics with its columns in ``order`` (a plain linear layer's: one row of columns)."""
    o = order.to(st.sq.device)
    return replace(st, sq=st.sq[..., o], sum=None if st.sum is None else st.sum[..., o],
                   gram=None if st.gram is None else st.gram[..., o, :][..., o])

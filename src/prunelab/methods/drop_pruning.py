"""DropPruning: stochastic drop-out of unimportant weights and drop-in of pruned ones.

Jia, Xiao, Chen, Yan, "DropPruning for Model Compression" (arXiv 1812.02035; v2 "Stochastic Model Pruning
via Weight Dropping Away and Back"). The paper's abstract fixes the idea (an iterative prune-retrain loop
whose pruning steps stochastically delete some unimportant weights and recover some pruned ones); it has no
public code, so the process below is a documented reconstruction (``../shared/papers.md`` section 1, [C]):
the :class:`~prunelab.engine.selection.Drop` selector at every round, a deterministic clean-up to exactly the target
at the final round, retraining in between by whatever loop drives the Pruner.

Options beyond the selector's: ``scope`` ``"layer"`` (candidates and clean-up per tensor) or ``"global"``
(one candidate threshold and one clean-up threshold over all tensors); ``revive_value`` ``"zero"`` (a
revived weight restarts at 0) or ``"pruned"`` (at its value when it was pruned). Revived weights always
restart with zero optimizer state, since pruned weights' state is kept at zero.
Each event's record in ``pruner.history`` gets ``dropped``, ``revived``, ``revived_alive`` (weights ever
revived that are alive now) and ``density``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..engine.selection import Drop
from ..engine.topk import kth_largest
from .base import METHODS, Method, Outcome


@METHODS.register("drop_pruning")
@dataclass
class DropPruning(Method):
    """DropPruning (Jia et al. 2018): which weights survive a stochastic drop-out / drop-in process over the rounds.

    The ``drop`` selector built from ``q``, ``p_out``, ``p_in``, ``candidates``, ``lam`` and ``anneal_rounds``
    (see :class:`prunelab.engine.selection.Drop`), per layer or under one global candidate threshold (``scope``);
    revived weights restart at ``revive_value``, with fresh optimizer state."""

    criterion: Any = "magnitude"
    granularity: Any = "element"
    allocation: Any = None  # from scope: uniform (layer) or global
    selector: Any = None    # built from the fields below
    q: float | None = 0.2
    p_out: float = 0.5
    p_in: float | None = None
    candidates: str = "lowest"
    lam: float = 1.0
    anneal_rounds: int = 0
    scope: str = "layer"
    revive_value: str = "zero"
    _state: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"drop_pruning scope must be 'layer' or 'global', got {self.scope!r}")
        if self.revive_value not in ("zero", "pruned"):
            raise ConfigError(f"drop_pruning revive_value must be 'zero' or 'pruned', got {self.revive_value!r}")
        if self.allocation is None:
            self.allocation = "uniform" if self.scope == "layer" else "global"
        if self.selector is None:
            self.selector = Drop(q=self.q, p_out=self.p_out, p_in=self.p_in, candidates=self.candidates,
                                 lam=self.lam, anneal_rounds=self.anneal_rounds)
        super().__post_init__()

    def before_prune(self, view, ctx) -> dict:
        """Global scope: one candidate threshold over all tensors, handed to the Drop selector on the Context.
        ``revive_value: pruned``: the weights as they are before the event, to store the pruned ones' values."""
        out = {}
        sel = self.selector_
        if isinstance(sel, Drop) and self.scope == "global" and sel.candidates == "lowest" and not ctx.final:
            out["candidate_threshold"] = self._global_candidate_threshold(view, ctx, sel.q_at(ctx))
        if self.revive_value == "pruned":
            out["weights_before"] = {n: p.detach().clone() for n, p in view.params.items()}
        return out

    def _global_candidate_threshold(self, view, ctx, q: float) -> float | None:
        """The score below which an alive group is among the lowest q fraction over all tensors."""
        gran = self.granularity_
        scores = self.criterion_.scores(view.params, ctx)
        alive_scores = [gran.group_scores(view.canonical(n, scores[n]).float())[gran.alive(view.canonical(n, view.masks[n]))]
                        for n in view.params]
        n_alive = sum(a.numel() for a in alive_scores)
        keep = n_alive - int(q * n_alive + 0.5)
        return kth_largest(alive_scores, keep) if 0 < keep < n_alive else None

    _STATE_KEYS = ("ever_revived", "pruned_values")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{k}:{n}": t for k in self._STATE_KEYS for n, t in self._state.get(k, {}).items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        state: dict[str, dict] = {}
        for key, t in tensors.items():
            kind, _, name = key.partition(":")
            if kind not in self._STATE_KEYS or not name:
                raise CheckpointError(f"the checkpoint's method state has an entry {key!r} that drop_pruning "
                                      "does not keep")
            state.setdefault(kind, {})[name] = t.bool() if kind == "ever_revived" else t
        self._state.update(state)

    def after_prune(self, view, old, new, ctx) -> Outcome:
        """Counts for the event's record; with ``revive_value: pruned``, the revived weights' stored values."""
        ever = self._state.setdefault("ever_revived", {})
        stored = self._state.setdefault("pruned_values", {})
        before = ctx.weights_before
        dropped = revived = revived_alive = 0
        values = {}
        with torch.no_grad():
            for n, p in view.params.items():
                gone, back = old[n] & ~new[n], ~old[n] & new[n]
                dropped += int(torch.count_nonzero(gone))
                n_back = int(torch.count_nonzero(back))
                revived += n_back
                if n_back:
                    ever[n] = ever[n] | back if n in ever else back.clone()
                if before is not None:
                    if n in stored and n_back:
                        values[n] = (back, stored[n].clone())
                    stored.setdefault(n, torch.zeros_like(p))[gone] = before[n][gone]
                if n in ever:
                    revived_alive += int(torch.count_nonzero(ever[n] & new[n]))
        record = {"dropped": dropped, "revived": revived, "revived_alive": revived_alive, "density": new.density()}
        return Outcome(record, values)

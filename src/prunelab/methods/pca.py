"""PCA pruning: one shot, one knob (Riera, Arnau, Gonzalez, "(Pen-) Ultimate DNN Pruning", arXiv 1906.02535).

A. Widths. For every target layer but the classifier, the PCA of its centered output activations over a
   calibration set (conv: channels are features, spatial positions are observations) gives k, the smallest
   number of components whose explained variance reaches ``tau``. The k units kept are those with the most
   variance captured by the top-k components, sum_{c<k} lambda_c v_ic^2 (the diagonal of the rank-k
   reconstruction of the covariance); the others are removed with their bias and BatchNorm entries, so the
   model shrinks (``channels``).
B. Connections. With the removed units already silenced, a second calibration pass gives E|a_i| of every
   layer's inputs. For unit j, c_ij = |w_ij| * E|a_i| (conv: every weight of input channel i), RI_ij =
   c_ij / sum_k c_kj, and j keeps the smallest set of its connections whose RI sums to ``tau_c`` (default
   ``tau``); connections from silenced inputs have RI 0 and go first.
Then the run retrains once. Calibration is one request of two passes (:mod:`prunelab.calibration`): the output
moments for step A, then, once the Pruner has written step A's decision (the removed units and their bias and
BatchNorm entries at zero), the input moments for step B; the method sees statistics, never batches, and keeps
nothing between the passes (step A's masks come back on ``ctx.decided``). ``sequential: true`` measures each
layer on the outputs of the layers already pruned (the paper measures all from the dense model: default false).
The masks are decided in :meth:`PCAPruning.decide`, not by the criterion -> allocation -> selector pipeline,
because the decisions are a spectrum cut per layer and a cumulative sum per unit, not a ranking under a
count: this is the one built-in method that uses that escape hatch. The run's ``sparsity`` is therefore an
outcome and the recipe's value is ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..analysis.activations import pca_width, unit_contributions
from ..calibration.request import Calibration
from ..engine.criteria import Needs
from ..errors import ConfigError
from ..registry import check_fraction
from .base import METHODS, Decision, Method


def cumulative_keep(ri: Tensor, tau: float) -> Tensor:
    """Per row of ``ri`` (rows sum to 1 or are all zero), keep the smallest set of largest entries whose sum
    reaches ``tau``; all-zero rows keep nothing."""
    order = ri.argsort(dim=1, descending=True, stable=True)
    sorted_ri = ri.gather(1, order)
    before = sorted_ri.cumsum(1) - sorted_ri  # importance gathered before each entry
    keep_sorted = (before < tau - 1e-12) & (sorted_ri > 0)
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(1, order, keep_sorted)
    return keep


def relative_importance(weight: Tensor, mean_abs_input: Tensor) -> Tensor:
    """RI of every connection, (out, fan-in) rows summing to one: |w_ij| E|a_i| / sum_k |w_kj| E|a_k|."""
    w = weight.detach().abs().double()
    a = mean_abs_input.to(w.device)
    shape = [1, -1] + [1] * (w.dim() - 2)
    c = (w * a.reshape(shape)).reshape(w.shape[0], -1)
    total = c.sum(1, keepdim=True)
    return torch.where(total > 0, c / total.clamp_min(1e-300), torch.zeros_like(c))


@METHODS.register("pca")
@dataclass
class PCAPruning(Method):
    """(Pen-)Ultimate PCA pruning: how wide each layer should be, from the spectrum of its activations.

    Each layer keeps as many units as principal components explain ``tau`` of its activations' variance
    (``tau_c`` for convolutions), measured on ``samples`` calibration inputs; the widths are decided by the
    method itself (see the module docstring)."""

    one_shot: ClassVar[bool] = True
    criterion: Any = "magnitude"  # not used for the decision (see the module docstring); kept for reports
    granularity: Any = "element"
    channels: bool = True
    tau: float = 0.99
    tau_c: float | None = None
    samples: int = 2048
    units: bool = True
    connections: bool = True
    sequential: bool = False  # true: each layer measured on the outputs of the layers already pruned

    def __post_init__(self) -> None:
        for label, v in (("tau", self.tau), ("tau_c", self.tau_c)):
            if v is not None and check_fraction(f"pca {label}", v, allow_one=True) == 0:
                raise ConfigError(f"pca {label} must be in (0, 1], got 0")
        if not isinstance(self.samples, int) or isinstance(self.samples, bool) or self.samples < 2:
            raise ConfigError(f"pca needs at least 2 calibration samples, got {self.samples!r}")
        if not isinstance(self.sequential, bool):
            raise ConfigError(f"pca sequential must be true or false, got {self.sequential!r}")
        if not (self.units or self.connections):
            raise ConfigError("pca with neither units nor connections prunes nothing: enable one")
        super().__post_init__()

    def describe(self) -> str:
        return f"pca (tau={self.tau:g}, tau_c={self.tau if self.tau_c is None else self.tau_c:g}, " \
               f"{self.samples} calibration samples)"

    def needs(self) -> Needs:
        passes = ((("outputs",),) if self.units else ()) + ((("mean_abs",),) if self.connections else ())
        return Needs(calibration=Calibration(self.samples, passes, sequential=self.sequential))

    def decide(self, view, ctx) -> Decision:
        """Step A (the units) on the pass of output moments, step B (the connections) on the pass of input
        moments measured after step A's units were removed (the Pruner wrote them), for the group ``ctx.group``."""
        classifier = view.structure.ignored if view.structure is not None else []
        units_pass = self.units and ctx.calibration_pass == 0
        masks, plan = {}, {}
        for name in ctx.group:  # every weight as (out, in, *kernel); masks back in its own layout
            w, layer, st = view.canonical(name, view.params[name]), name.rsplit(".", 1)[0], ctx.input_stats[name]
            if units_pass:
                rows = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
                k = w.shape[0]
                if layer not in classifier:
                    k, vals, vecs = pca_width(st.outputs.covariance(), self.tau)
                    rows = torch.zeros_like(rows)
                    rows[unit_contributions(vals, vecs, k).topk(k).indices.to(w.device)] = True
                masks[name] = view.canonical(name, rows.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w)).clone()
                plan[layer] = {"units": w.shape[0], "kept_units": k}
                if not self.connections:
                    plan[layer]["density"] = masks[name].float().mean().item()
                continue
            before = (ctx.decided or {}).get(name)
            if before is None:  # connections only: every unit kept
                before = torch.ones_like(view.params[name], dtype=torch.bool)
                plan[layer] = {"units": w.shape[0], "kept_units": w.shape[0]}
            mean_abs = st.inputs.mean_abs()
            if mean_abs.numel() != w.shape[1]:
                raise ConfigError(f"pca: the inputs of {layer} have {mean_abs.numel()} features, its weight "
                                  f"{w.shape[1]}; grouped convolutions are not supported")
            tau_c = self.tau if self.tau_c is None else self.tau_c
            keep = cumulative_keep(relative_importance(w, mean_abs), tau_c).reshape(w.shape)
            masks[name] = before & view.canonical(name, keep.to(w.device))
            plan.setdefault(layer, {})["density"] = masks[name].float().mean().item()
        return Decision(masks, record={"plan": plan})

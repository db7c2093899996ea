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
Then the run retrains once. Calibration arrives through the engine's seam: the method declares
``needs().calibration_samples`` and reads the batches given to ``pruner.calibrate(batches)`` from the event's
Context; the removed units are silenced for step B through ``PruneView.silenced`` (weights restored after).
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

from ..analysis.activations import collect, pca_width, unit_contributions
from ..errors import ConfigError
from ..registry import check_fraction
from ..criteria import Needs
from .base import METHODS, Method, Outcome


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
    one_shot: ClassVar[bool] = True
    criterion: Any = "magnitude"  # not used for the decision (see the module docstring); kept for reports
    granularity: Any = "element"
    channels: bool = True
    tau: float = 0.99
    tau_c: float | None = None
    samples: int = 2048
    units: bool = True
    connections: bool = True

    def __post_init__(self) -> None:
        for label, v in (("tau", self.tau), ("tau_c", self.tau_c)):
            if v is not None and check_fraction(f"pca {label}", v, allow_one=True) == 0:
                raise ConfigError(f"pca {label} must be in (0, 1], got 0")
        if not isinstance(self.samples, int) or self.samples < 2:
            raise ConfigError(f"pca needs at least 2 calibration samples, got {self.samples!r}")
        self.plan: dict = {}  # per-layer widths and densities of the last decision
        super().__post_init__()

    def describe(self) -> str:
        return f"pca (tau={self.tau:g}, tau_c={self.tau if self.tau_c is None else self.tau_c:g}, " \
               f"{self.samples} calibration samples)"

    def needs(self) -> Needs:
        return Needs(calibration_samples=self.samples)

    def after_prune(self, view, old, new, ctx) -> Outcome:
        return Outcome(record={"plan": self.plan})

    def decide(self, view, ctx) -> dict[str, Tensor]:
        if ctx.calibration is None:
            raise ConfigError("pca needs calibration data: call pruner.calibrate(batches) with a few batches of "
                              "model inputs before pruning")
        model, params = view.model, view.params
        layers = [n.rsplit(".", 1)[0] for n in params]
        classifier = view.channels.ignored if view.channels is not None else []
        samples = ctx.calibration_samples or self.samples
        stats = collect(model, layers, ctx.calibration, samples, outputs=self.units)
        masks, self.plan = {}, {}
        for name, layer in zip(params, layers):
            w = params[name]
            rows = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
            k = w.shape[0]
            if self.units and layer not in classifier:
                k, vals, vecs = pca_width(stats.outputs[layer].covariance(), self.tau)
                keep = unit_contributions(vals, vecs, k).topk(k).indices
                rows = torch.zeros_like(rows)
                rows[keep.to(w.device)] = True
            masks[name] = rows.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
            self.plan[layer] = {"units": w.shape[0], "kept_units": k}
        if self.connections:
            tau_c = self.tau if self.tau_c is None else self.tau_c
            # the removed units (weights and channel companions) are silenced while the inputs are measured
            with view.silenced(masks):
                inputs = collect(model, layers, ctx.calibration, samples, outputs=False)
                for name, layer in zip(params, layers):
                    w = params[name]
                    mean_abs = inputs.inputs[layer].mean_abs()
                    if mean_abs.numel() != w.shape[1]:
                        raise ConfigError(f"pca: the inputs of {layer} have {mean_abs.numel()} features, its "
                                          f"weight {w.shape[1]}; grouped convolutions are not supported")
                    keep = cumulative_keep(relative_importance(w, mean_abs), tau_c).reshape(w.shape)
                    masks[name] = masks[name] & keep.to(w.device)
        for name, layer in zip(params, layers):
            self.plan[layer]["density"] = masks[name].float().mean().item()
        return masks

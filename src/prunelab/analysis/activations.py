"""Activation statistics over a calibration set, streamed: covariance of each layer's outputs and the mean
absolute value of each layer's inputs, without holding the activations.

Conv layers: channels are the features and every spatial position of every sample is one observation (the
convention of PCA on conv activations); Linear layers: units are features, samples are observations. Sums are
accumulated in float64 per batch (``n``, sum x, X^T X), so the covariance of batches equals the one computed at
once up to float64 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor, nn

from ..calibration import stream
from ..errors import ConfigError


def _features(t: Tensor) -> Tensor:
    """(observations, features): channels last for conv activations (N, C, *spatial)."""
    if t.dim() > 2:
        return t.transpose(1, -1).reshape(-1, t.shape[1])
    return t.reshape(t.shape[0], -1) if t.dim() == 2 else t.reshape(1, -1)


@dataclass
class Moments:
    """Streaming first and second moments of features."""

    n: int = 0
    s: Tensor | None = None    # sum x (d,)
    ss: Tensor | None = None   # sum x x^T (d, d), only when the covariance is asked for
    sabs: Tensor | None = None  # sum |x| (d,)

    def add(self, x: Tensor, second: bool) -> None:
        x = _features(x.detach()).double()
        if self.s is None:
            d = x.shape[1]
            self.s = torch.zeros(d, dtype=torch.float64, device=x.device)
            self.sabs = torch.zeros_like(self.s)
            if second:
                self.ss = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        self.n += x.shape[0]
        self.s += x.sum(0)
        self.sabs += x.abs().sum(0)
        if second:
            self.ss += x.T @ x

    def mean(self) -> Tensor:
        return self.s / max(self.n, 1)

    def mean_abs(self) -> Tensor:
        return self.sabs / max(self.n, 1)

    def covariance(self) -> Tensor:
        """Unbiased covariance of the centered features."""
        mu = self.mean()
        return (self.ss - self.n * torch.outer(mu, mu)) / max(self.n - 1, 1)


@dataclass
class ActivationStats:
    """Per layer name: ``outputs`` moments (with covariance) and ``inputs`` moments (mean |a| only)."""

    outputs: dict[str, Moments] = field(default_factory=dict)
    inputs: dict[str, Moments] = field(default_factory=dict)
    samples: int = 0


def collect(model: nn.Module, layers: list[str], batches: Iterable, samples: int = 2048,
            outputs: bool = True) -> ActivationStats:
    """Moments of every layer's inputs (and outputs) over the first ``samples`` inputs of ``batches``, streamed
    by the calibration loop (:func:`prunelab.calibration.stream`: any model inputs, eval mode, no gradients)."""
    modules = dict(model.named_modules())
    stats = ActivationStats()

    def hook(name):
        stats.inputs[name] = Moments()
        if outputs:
            stats.outputs[name] = Moments()

        def fn(mod, inp, kwargs, out):
            stats.inputs[name].add(inp[0], second=False)
            if outputs:
                stats.outputs[name].add(out, second=True)
        return fn
    stats.samples = stream(model, {modules[name]: hook(name) for name in layers}, batches, samples)
    unseen = [n for n in layers if stats.inputs[n].n == 0]
    if unseen:
        raise ConfigError(f"calibration never reached {', '.join(unseen[:3])}: the model did not call them")
    return stats


def pca_width(cov: Tensor, tau: float) -> tuple[int, Tensor, Tensor]:
    """(k, eigenvalues descending, eigenvectors as columns): k is the smallest number of principal components
    whose explained variance ratio reaches ``tau`` (at least 1)."""
    vals, vecs = torch.linalg.eigh(cov)
    vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1)
    total = vals.sum()
    if total <= 0:
        return 1, vals, vecs
    ratio = vals.cumsum(0) / total
    k = int((ratio < tau - 1e-12).sum()) + 1
    return min(k, len(vals)), vals, vecs


def unit_contributions(vals: Tensor, vecs: Tensor, k: int) -> Tensor:
    """Variance of each unit captured by the top-k components: sum_{c<k} lambda_c v_ic^2 (the diagonal of the
    rank-k reconstruction of the covariance). The units with the largest values are kept."""
    return (vecs[:, :k] ** 2 * vals[:k]).sum(1)

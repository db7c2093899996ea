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


@torch.no_grad()
def collect(model: nn.Module, layers: list[str], batches: Iterable, samples: int = 2048,
            outputs: bool = True, device: str | torch.device = "cpu") -> ActivationStats:
    """Run ``model`` (eval mode) over ``batches`` ((x, y) or x) until ``samples`` inputs were seen."""
    modules = dict(model.named_modules())
    stats = ActivationStats()
    handles = []
    for name in layers:
        stats.inputs[name] = Moments()
        if outputs:
            stats.outputs[name] = Moments()

        def hook(mod, inp, out, name=name):
            stats.inputs[name].add(inp[0], second=False)
            if outputs:
                stats.outputs[name].add(out, second=True)
        handles.append(modules[name].register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x[: samples - stats.samples].to(device)
            model(x)
            stats.samples += len(x)
            if stats.samples >= samples:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was)
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

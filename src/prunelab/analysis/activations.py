"""PCA of activations: how many principal components explain a fraction of the variance, and which units carry
it. The moments come from the calibration pipeline's observer (:class:`prunelab.calibration.Moments`, kind
``outputs``), streamed without holding the activations.
"""
from __future__ import annotations

from torch import Tensor
import torch

from ..calibration.observers import Moments, features  # noqa: F401  (re-exported: the moments PCA reads)


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

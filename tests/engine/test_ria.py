"""RIA (Zhang et al., ICLR 2024) against a hand computation on a 4x6 matrix, and through the Wanda method."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.errors import ConfigError


def _hand(w, x, a=0.5):
    """(|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||^a, written out entry by entry."""
    rows, cols = w.shape
    out = torch.zeros(rows, cols, dtype=torch.float64)
    for i in range(rows):
        for j in range(cols):
            col = sum(abs(float(w[k, j])) for k in range(rows))
            row = sum(abs(float(w[i, k])) for k in range(cols))
            norm = sum(float(x[t, j]) ** 2 for t in range(x.shape[0])) ** 0.5
            out[i, j] = (abs(float(w[i, j])) / col + abs(float(w[i, j])) / row) * norm ** a
    return out


def test_ria_scores_and_masks_by_hand():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4, bias=False)
    x = torch.randn(16, 6)
    x[:, 2] *= 10  # a loud input: RIA's norm ** 0.5 weighs it less than Wanda's norm
    w = layer.weight.detach().clone()
    hand = _hand(w, x)
    from prunelab.engine.criteria import CRITERIA, Context

    class Norms:  # the statistics a criterion reads: the input norm of every column
        def norms(self):
            return x.double().square().sum(0).sqrt()
    ria = CRITERIA.build({"name": "ria", "samples": 16})
    got = ria.scores({"0.weight": layer.weight}, Context(input_stats={"0.weight": Norms()}))["0.weight"]
    assert torch.allclose(got.double(), hand, rtol=1e-5)
    model = nn.Sequential(layer)
    p = Pruner(model, {"name": "wanda", "criterion": {"name": "ria", "samples": 16}}, sparsity=0.5,
               schedule="manual")
    p.calibrate([x], targets=False)
    p.prune(0.5)
    keep = torch.zeros_like(hand, dtype=torch.bool).scatter_(1, hand.topk(3, dim=1).indices, True)
    assert torch.equal(p.masks["0.weight"], keep)  # three of six kept in every output row


def test_ria_a_must_be_a_non_negative_number():
    with pytest.raises(ConfigError, match="ria a must be a number"):
        Pruner(nn.Sequential(nn.Linear(6, 4)), {"name": "wanda", "criterion": {"name": "ria", "a": -1}})

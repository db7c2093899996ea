"""PCA pruning: activation statistics, widths, relative importance, end to end."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.analysis.activations import Moments, pca_width, unit_contributions
from prunelab.errors import ConfigError
from prunelab.experiment import Runner, load_recipe
from prunelab.methods.pca import cumulative_keep, relative_importance


def _low_rank(n, d, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, r, generator=g, dtype=torch.float64) @ torch.randn(r, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_width_equals_the_rank_of_the_activations(rank):
    x = _low_rank(500, 12, rank)
    m = Moments()
    m.add(x, second=True)
    k, vals, _ = pca_width(m.covariance(), 1 - 1e-9)
    assert k == rank


def test_width_is_monotone_in_tau():
    x = torch.randn(400, 10, dtype=torch.float64) * torch.linspace(0.1, 3, 10, dtype=torch.float64)
    m = Moments()
    m.add(x, second=True)
    ks = [pca_width(m.covariance(), t)[0] for t in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)]
    assert ks == sorted(ks) and ks[0] < ks[-1] == 10


def test_covariance_in_batches_equals_at_once():
    x = torch.randn(300, 6, dtype=torch.float64) + 2.0
    whole, parts = Moments(), Moments()
    whole.add(x, second=True)
    for chunk in x.split(37):
        parts.add(chunk, second=True)
    assert torch.allclose(parts.covariance(), whole.covariance(), atol=1e-12)
    assert torch.allclose(whole.covariance(), torch.cov(x.T), atol=1e-12)
    conv = torch.randn(4, 3, 5, 5)  # channels are features, positions are observations
    c = Moments()
    c.add(conv, second=True)
    assert c.n == 100 and torch.allclose(c.covariance(), torch.cov(conv.permute(1, 0, 2, 3).reshape(3, -1).double()))


def test_kept_units_are_the_ones_carrying_the_variance():
    x = torch.zeros(200, 5, dtype=torch.float64)
    x[:, 1] = torch.randn(200, dtype=torch.float64) * 5
    x[:, 3] = torch.randn(200, dtype=torch.float64) * 3
    x[:, [0, 2, 4]] = torch.randn(200, 3, dtype=torch.float64) * 0.01
    m = Moments()
    m.add(x, second=True)
    k, vals, vecs = pca_width(m.covariance(), 0.99)
    assert k == 2 and set(unit_contributions(vals, vecs, k).topk(k).indices.tolist()) == {1, 3}


def test_relative_importance_sums_to_one_per_unit_and_cumulative_keep():
    w = torch.randn(7, 4, 3, 3)
    ri = relative_importance(w, torch.rand(4) + 0.1)
    assert ri.shape == (7, 36) and torch.allclose(ri.sum(1), torch.ones(7, dtype=torch.float64))
    rows = torch.tensor([[0.5, 0.1, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    keep = cumulative_keep(rows, 0.8)
    assert keep.tolist() == [[True, False, True, False], [True, True, True, True], [False] * 4]
    dead_input = relative_importance(torch.ones(2, 3), torch.tensor([1.0, 0.0, 1.0]))
    assert (dead_input[:, 1] == 0).all()


def test_bad_parameters_are_rejected():
    for bad in ({"tau": 0}, {"tau": 1.5}, {"tau_c": -0.1}, {"samples": 1}):
        with pytest.raises(ConfigError):
            Pruner(nn.Linear(3, 3), method={"name": "pca", **bad}, sparsity=0.5, example_inputs=torch.zeros(1, 3))


def test_pca_end_to_end_on_digits(tmp_path):
    recipe = load_recipe("quickstart", ["prune.method={name: pca, tau: 0.95, samples: 512}",
                                        "prune.schedule.name=oneshot", "train.epochs=6", "prune.retrain.epochs=3",
                                        "prune.controls=[scratch_e]"])
    s = Runner(recipe, tmp_path / "run", progress=False, log=lambda m: None, share_dense=False).run()
    plan = next(l for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"plan"' in l)
    assert '"kept_units"' in plan
    assert s["shrunk"]["params"] < s["params_total"] / 3
    assert s["shrunk"]["test_acc"] == pytest.approx(s["pruned_acc"])
    assert s["pruned_acc"] > 0.8 and "scratch_e" in s["controls"]
    assert set(s["controls"]["scratch_e"]) >= {"test_acc", "epochs"} and "files" not in s["controls"]["scratch_e"]

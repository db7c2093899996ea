"""OWL's layerwise sparsity (Yin et al., ICML 2024) against a hand computation, and with Wanda end to end."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.engine.allocation import OWL, LayerGroups, block_of


def _layer(name, scores):
    s = torch.tensor(scores, dtype=torch.float32)
    return LayerGroups(name, tuple(s.shape), s.shape[0], s.shape[1], 1, True, s)


def test_densities_by_hand_on_two_blocks_of_4x6():
    """Block 0 (two 4x6 layers) has 2 of 48 scores above 5x its mean; block 1 (one 4x6 layer) none."""
    ones = [[1.0] * 6 for _ in range(4)]
    spiky = [row[:] for row in ones]
    spiky[0][0] = spiky[3][5] = 100.0  # mean (46 + 200) / 48 = 5.125; 5x = 25.6: two outliers
    layers = [_layer("model.layers.0.q.weight", spiky), _layer("model.layers.0.k.weight", ones),
              _layer("model.layers.1.q.weight", ones)]
    assert [block_of(l.name) for l in layers] == ["model.layers.0", "model.layers.0", "model.layers.1"]
    owl = OWL(m=5.0, lam=0.1)
    d = owl.densities(layers, 0.5)
    # D = (2/48, 0): scaled to (0.2, 0), less their mean 0.1: +-0.1 around 0.5; the unequal blocks (48 and 24
    # elements) then shift both by c with 48 (0.6 + c) + 24 (0.4 + c) = 36: c = -1/30
    assert d["model.layers.0"] == pytest.approx(0.6 - 1 / 30, abs=1e-9)
    assert d["model.layers.1"] == pytest.approx(0.4 - 1 / 30, abs=1e-9)
    assert 48 * d["model.layers.0"] + 24 * d["model.layers.1"] == pytest.approx(36)
    keep = owl.keep_counts(layers, 0.5, 0.5)  # per row of 6: round(6 d)
    assert keep == {"model.layers.0.q.weight": 4 * 3, "model.layers.0.k.weight": 4 * 3, "model.layers.1.q.weight": 4 * 2}


def test_equal_blocks_get_the_authors_densities_within_lambda_and_the_target_on_average():
    g = torch.Generator().manual_seed(0)
    layers = [_layer(f"m.{i}.w.weight", (torch.randn(8, 16, generator=g).abs() ** (1 + i)).tolist())
              for i in range(4)]
    d = OWL(m=3.0, lam=0.08).densities(layers, 0.6)
    assert sum(d.values()) / 4 == pytest.approx(0.4)  # the target is their mean ...
    assert max(d.values()) - min(d.values()) == pytest.approx(2 * 0.08)  # ... and they span 2 lambda
    ratio = {f"m.{i}": float((l.scores > 3 * l.scores.mean()).float().mean()) for i, l in enumerate(layers)}
    assert sorted(d, key=d.get) == sorted(ratio, key=ratio.get)  # more outliers, more kept


def test_wanda_with_owl_prunes_the_layer_with_outlier_inputs_less():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 8)
    x[:, 0] *= 20  # one outlier feature into the first layer
    p = Pruner(model, {"name": "wanda", "allocation": {"name": "owl", "lam": 0.1}, "sequential": False,
                       "samples": 64}, sparsity=0.5, schedule="manual")
    p.calibrate([x], targets=False)
    p.prune(0.5)
    layer = {r["name"]: r["sparsity"] for r in p.summary()["layers"]}
    assert layer["0.weight"] < 0.5 < layer["2.weight"]
    assert abs(p.summary()["sparsity"] - 0.5) < 0.02  # per-row rounding of each layer's density
    with pytest.raises(Exception, match="owl lam"):
        Pruner(model, {"name": "wanda", "allocation": {"name": "owl", "lam": 2}, "sequential": False})


def test_sparsegpt_with_owl_takes_each_layers_sparsity_from_the_wanda_outliers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 8)
    x[:, 0] *= 20
    spec = {"name": "sparsegpt", "criterion": "wanda", "allocation": {"name": "owl", "lam": 0.1},
            "sequential": False, "samples": 64}
    p = Pruner(model, spec, sparsity=0.5, schedule="manual")
    assert p.needs.calibration.passes == (frozenset({"gram", "norms"}),)
    p.calibrate([x], targets=False)
    p.prune(0.5)
    assert p.history[-1]["layer_sparsity"]["0.weight"] < 0.5 < p.history[-1]["layer_sparsity"]["2.weight"]
    layer = {r["name"]: r["sparsity"] for r in p.summary()["layers"]}
    assert layer["0.weight"] == pytest.approx(p.history[-1]["layer_sparsity"]["0.weight"], abs=1 / 128)
    with pytest.raises(Exception, match="set sequential: false"):
        Pruner(model, {**spec, "sequential": True})

"""DSnoT (Zhang et al., ICLR 2024) against swaps worked out by hand on a 4x6 matrix and a 2:4 row, through the
Pruner from hand-made statistics, and on a random layer with correlated inputs: it never raises the error it
minimises and keeps every row's (and block's) count."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.engine.criteria import Needs
from prunelab.calibration.request import Calibration
from prunelab.engine.dsnot import refine, row_error
from prunelab.errors import ConfigError

T, F = True, False


def _rows(scores, effect, var, block=6, cycles=50, threshold=0.0):
    """refine() from the criterion's top half of each row, as the selector starts it."""
    scores, effect, var = (torch.tensor(t, dtype=torch.float64) for t in (scores, effect, var))
    keep = scores.shape[1] // 2
    if block == scores.shape[1]:
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(keep, dim=1).indices, True)
    else:  # n of every block
        b = scores.reshape(scores.shape[0], -1, block)
        kept = torch.zeros_like(b, dtype=torch.bool).scatter_(2, b.topk(block // 2, dim=2).indices, True)
        kept = kept.reshape(scores.shape)
    return refine(kept, torch.ones_like(kept), scores, effect, var, block, cycles, 1.0, threshold)


SCORES = [[6, 5, 4, 3, 2, 1]] * 4
EFFECT = [[3, -1, 0.5, 2, -0.2, 1],    # e = 2.8: regrow col 3 (largest), prune col 1 (the negative) -> e = -0.2;
                                       # then col 4 (e 0.5) and col 5 (e -0.7) would overshoot: stop
          [1, -0.3, 1, 0.6, 0.5, 0.4],  # e = 1.5: col 3's input varies 4x, so col 4 (0.5 / 1) goes first -> 0.7
          [1, 2, 3, 0, 0, 0],           # e = 0: nothing to do
          [1, 2, -1, -2, -0.5, 0.3]]    # e = -2.2: regrow col 3 for col 1 (1.8), col 5 for col 2 (0.5), stop
VAR = [[1] * 6, [1, 1, 1, 4, 1, 1], [1] * 6, [1] * 6]


def test_swaps_by_hand_on_a_4x6_matrix():
    kept = _rows(SCORES, EFFECT, VAR)
    assert kept.tolist() == [[T, F, T, T, F, F], [T, F, T, F, T, F], [T, T, T, F, F, F], [T, F, F, T, F, T]]
    e = row_error(kept, torch.tensor(EFFECT, dtype=torch.float64))
    assert e.tolist() == pytest.approx([-0.2, 0.7, 0.0, 0.5])


def test_threshold_and_cycles_stop_a_row_early():
    by_threshold = _rows(SCORES, EFFECT, VAR, threshold=1.9)  # row 3 stops at e = 1.8, after its first swap
    assert by_threshold[3].tolist() == [T, F, T, T, F, F]
    assert by_threshold[0].tolist() == [T, F, T, T, F, F]  # row 0 reached -0.2 < 1.9 the same way
    one = _rows(SCORES, EFFECT, VAR, cycles=1)
    assert one[3].tolist() == [T, F, T, T, F, F] and one[1].tolist() == [T, F, T, F, T, F]
    assert torch.equal(_rows(SCORES, EFFECT, VAR, cycles=0), _rows(SCORES, EFFECT, VAR, threshold=100.0))


def test_nm_swaps_stay_inside_a_block():
    # 2:4 on one row of 8: the criterion keeps cols 0, 1 and 6, 7; e = 0.5 - 1 + 0.2 + 3 = 2.7.
    # Regrow col 5 (3) for col 6, block 1's lowest score (e 0.7); col 2 for col 1 would give 2.2: skipped;
    # col 4 (0.2) for col 7 (0.1): 0.6; col 3 for col 1: 3.6, skipped; no candidates left.
    kept = _rows([[4, 3, 2, 1, 1, 2, 3, 4]], [[1, 2, 0.5, -1, 0.2, 3, 1, 0.1]], [[1] * 8], block=4)
    assert kept.tolist() == [[T, T, F, F, T, T, F, F]]


def _model_from(weight):
    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    return model


def test_through_the_pruner_from_calibration_means_and_variances():
    # magnitude scores 6..1; inputs mu +- 1 (variance 1), mu_j = effect_j / w_j: row 0 of the hand example
    w = torch.tensor([[6.0, 5, 4, 3, 2, 1]], dtype=torch.float64)
    mu = torch.tensor(EFFECT[0], dtype=torch.float64) / w[0]
    x = torch.stack([mu + 1, mu - 1]).double()
    model = _model_from(w).double()
    p = Pruner(model, {"name": "magnitude", "selector": {"name": "dsnot", "samples": 2}}, sparsity=0.5,
               schedule="manual")
    assert p.needs.calibration.passes == (frozenset({"norms", "sums"}),)
    p.calibrate([x], targets=False)
    p.prune(0.5)
    assert p.masks["0.weight"].tolist() == [[T, F, T, T, F, F]]


def _correlated_layer(seed=0, d_in=64, d_out=32, n=512):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g) / 8
    x = torch.randn(n, d_in, generator=g) @ mix + 2 * torch.randn(d_in, generator=g)  # correlated, off-centre
    return torch.randn(d_out, d_in, generator=g) / 8, x


@pytest.mark.parametrize("granularity", ["row", "element", "nm"])
def test_never_raises_the_error_it_minimises_and_keeps_the_counts(granularity):
    w, x = _correlated_layer()
    masks, errors = {}, {}
    for selector in ("topk", "dsnot"):
        model = _model_from(w)
        p = Pruner(model, {"name": "wanda", "granularity": granularity, "selector": selector, "sequential": False,
                           "samples": 512}, sparsity=0.5, schedule="manual")
        p.calibrate([x], targets=False)
        p.prune(0.5)
        m = masks[selector] = p.masks["0.weight"]
        lost = x.double() @ (w * ~m).double().T  # the output pruning removes, per token and row
        errors[selector] = (lost.mean(0).abs(), lost.square().mean())
    before, after = masks["topk"], masks["dsnot"]
    assert not torch.equal(before, after)
    assert torch.equal(before.sum(1), after.sum(1))  # every row keeps its count
    if granularity == "nm":
        assert (after.reshape(32, -1, 4).sum(2) == 2).all()
    assert (errors["dsnot"][0] <= errors["topk"][0] + 1e-9).all()  # |E[lost output]| per row never rises
    assert errors["dsnot"][0].mean() < 0.2 * errors["topk"][0].mean()
    assert errors["dsnot"][1] < errors["topk"][1]  # and here, with off-centre inputs, the squared error falls


def test_refuses_groups_other_than_single_weights_and_sparsegpt():
    w, x = _correlated_layer(d_in=8, d_out=4, n=16)
    p = Pruner(_model_from(w), {"name": "wanda", "granularity": "filter", "selector": "dsnot",
                                "sequential": False}, sparsity=0.5, schedule="manual")
    p.calibrate([x], targets=False)
    with pytest.raises(ConfigError, match="selector dsnot decides single weights; granularity filter"):
        p.prune(0.5)
    with pytest.raises(ConfigError, match="sparsegpt chooses its masks while it reconstructs"):
        Pruner(_model_from(w), {"name": "sparsegpt", "selector": "dsnot"}, sparsity=0.5, schedule="manual")
    for bad, match in (({"cycles": -1}, "dsnot cycles must be an integer"), ({"power": "x"}, "power must be a"),
                       ({"threshold": float("nan")}, "threshold must be a finite number")):
        with pytest.raises(ConfigError, match=match):
            Pruner(_model_from(w), {"name": "wanda", "selector": {"name": "dsnot", **bad}})


def test_needs_join_adds_the_selector_kinds_to_the_last_pass():
    pca_like = Needs(calibration=Calibration(64, ("outputs", "mean_abs"), sequential=True))
    joined = pca_like.join(Needs(gradient_batches=2, calibration=Calibration(128, ({"norms", "sums"},))))
    assert joined.gradient_batches == 2 and joined.calibration.samples == 64 and joined.calibration.sequential
    assert joined.calibration.passes == (frozenset({"outputs"}), frozenset({"mean_abs", "norms", "sums"}))
    assert Needs().join(Needs(calibration=Calibration(8))).calibration == Calibration(8)

"""Streamed global selection gives bit-identical masks to the general path (scores held in full)."""
import pytest
import torch
from torch import nn

import prunelab
from prunelab.engine.topk import SMALL, _true_positions, streamed_topk_masks


def _model(seed: int, quantum: float | None = None, dtype=torch.float32) -> nn.Module:
    """About 1.2 x SMALL weights in layers of unequal sizes; ``quantum`` rounds them (many exact ties)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1000, 1200), nn.ReLU(), nn.Linear(1200, 700), nn.ReLU(), nn.Linear(700, 1001))
    assert sum(m.weight.numel() for m in model if isinstance(m, nn.Linear)) > SMALL
    if quantum:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_((p / quantum).round() * quantum)
    return model.to(dtype)


def _masks(model, method, sparsities, stream: bool, monkeypatch):
    """The masks after each of ``sparsities`` (pruner.prune), streamed or forced onto the general path."""
    import prunelab.pruner as pr

    calls = []
    real = pr.streamed_masks
    if not stream:
        monkeypatch.setattr(pr, "can_stream", lambda *a: False)
    def counted(*a):
        out = real(*a)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(pr, "streamed_masks", counted)
    pruner = prunelab.Pruner(model, method, schedule="manual", sparsity=sparsities[-1])
    out = []
    for s in sparsities:
        pruner.prune(s)
        out.append({n: m.clone() for n, m in pruner.masks.items()})
    return out, sum(calls)


@pytest.mark.parametrize("quantum,criterion,dtype", [(None, "magnitude", torch.float32),
                                                     (1e-5, "magnitude", torch.float32),  # ~400 ties at each value
                                                     (None, "l2", torch.float32),
                                                     (None, "magnitude", torch.bfloat16)])
def test_streamed_masks_equal_the_general_path(quantum, criterion, dtype, monkeypatch):
    method = {"name": "magnitude", "criterion": criterion, "allocation": "global"}
    with monkeypatch.context() as mp:
        general, _ = _masks(_model(0, quantum, dtype), method, [0.5, 0.8], False, mp)
    with monkeypatch.context() as mp:
        streamed, calls = _masks(_model(0, quantum, dtype), method, [0.5, 0.8], True, mp)
    assert calls == 2  # both events (the second with pruned weights alive=False) were streamed
    for g, s in zip(general, streamed):
        assert list(g) == list(s)
        for n in g:
            assert torch.equal(g[n], s[n]), n
    total = sum(m.numel() for m in streamed[-1].values())
    assert sum(int(m.sum()) for m in streamed[-1].values()) == int(0.2 * total + 0.5)


def test_streamed_search_gives_up_on_a_hopeless_bracket():
    ones = [torch.ones(SMALL), torch.ones(SMALL // 2)]  # every score tied: the bracket holds everything
    assert streamed_topk_masks(ones, 100, lambda v, out: out.copy_(v), [None, None]) is None
    # and the Pruner then takes the general path: exactly k kept, ties by position
    model = nn.Sequential(nn.Linear(2048, 1536, bias=False))
    nn.init.ones_(model[0].weight)
    pruner = prunelab.Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.75)
    m = pruner.masks["0.weight"].reshape(-1)
    k = int(0.25 * m.numel() + 0.5)
    assert int(m.sum()) == k and bool(m[:k].all())


@pytest.mark.parametrize("n", [1, 7, 8, 1001, 1 << 12])
def test_true_positions_is_nonzero(n):
    g = torch.Generator().manual_seed(n)
    flags = torch.rand(n, generator=g) < 0.05
    buf = torch.empty(n, dtype=torch.bool)
    buf.copy_(flags)
    assert torch.equal(_true_positions(buf), flags.nonzero().squeeze(1))


def test_a_streamed_pass_keeps_the_floor():
    """Above the streaming size a pass that would empty a classifier's rows falls back to the general path,
    which keeps every row's best weight: the same masks as the general path on the same scores."""
    from prunelab import Pruner
    from prunelab.engine.topk import SMALL

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, SMALL // 1024 + 8), torch.nn.Linear(SMALL // 1024 + 8, 4))
    with torch.no_grad():
        model[1].weight.mul_(1e-4)
    p = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.99, schedule="manual")
    p.prune(0.99)
    assert p.masks["1.weight"].sum(1).tolist() == [1, 1, 1, 1]
    assert bool(p.masks["0.weight"].any(1).all())


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_weight_that_is_not_finite_is_named_by_the_streamed_pass_and_the_general_path(stream, bad, monkeypatch):
    """The streamed pass checks each slice while it is in cache (no separate read of every weight); the general
    path checks before scoring: either way one sentence naming the tensor, and no mask or weight changed."""
    import prunelab.pruner as pr

    model = _model(0)
    with torch.no_grad():
        model[2].weight[5, 7] = bad
    if not stream:
        monkeypatch.setattr(pr, "can_stream", lambda *a: False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = prunelab.Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.5, schedule="manual")
    with pytest.raises(prunelab.ConfigError, match="weight 2.weight holds NaN or infinite values"):
        pruner.prune(0.5)
    assert all(torch.equal(p, before[n]) or n == "2.weight" for n, p in model.named_parameters())
    assert pruner.masks.sparsity() == 0.0

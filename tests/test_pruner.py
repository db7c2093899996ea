"""The Pruner in a hand-written training loop, mask enforcement, and agreement with torch.nn.utils.prune."""
import copy

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

import prunelab
from prunelab import ConfigError, Pruner


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw"])
def test_pruned_weights_and_optimizer_state_stay_zero(opt_name):
    model = _net()
    names = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
           "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
           "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)}[opt_name](model.parameters())
    # a few dense steps first so the optimizer state of soon-pruned weights is nonzero
    for i in range(3):
        opt.zero_grad(); nn.functional.cross_entropy(model(_batch(i)[0]), _batch(i)[1]).backward(); opt.step()
    pruner = Pruner(model, "magnitude", sparsity=0.8)
    for i in range(5):
        x, y = _batch(i + 3)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step(opt)
        for name, p in pruner.params.items():
            dead = ~pruner.masks[name]
            assert (p[dead] == 0).all()
            for v in opt.state[p].values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert (v[dead] == 0).all()
    # the model was not rewritten: same parameter names, no wrapper buffers
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == keys  # e.g. no 0.weight_orig / 0.weight_mask as torch.nn.utils.prune adds


def test_hand_written_loop_with_cubic_schedule_reaches_target_and_freezes():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = Pruner(model, "magnitude", schedule={"name": "cubic", "start": 2, "end": 12, "frequency": 2}, sparsity=0.9)
    snapshots = []
    for step in range(20):
        x, y = _batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.after_backward()
        opt.step()
        pruner.step(opt)
        snapshots.append(pruner.masks.clone())
        assert all(snapshots[-1][n].le(snapshots[-2][n]).all() for n in pruner.masks) if step else True  # nested
    assert pruner.masks.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert snapshots[12].equal(snapshots[-1])  # frozen after the end
    summary = pruner.summary()
    assert summary["compression_prunable"] == pytest.approx(10, rel=0.01)
    assert [row["name"] for row in summary["layers"]] == ["0.weight", "3.weight"]


@pytest.mark.parametrize("sparsity", [0.3, 0.7, 0.9])
def test_achieved_sparsity_equals_budget_per_layer(sparsity):
    model = _net()
    pruner = Pruner(model, "magnitude", sparsity=sparsity)
    for name, m in pruner.masks.items():
        n = m.numel()
        assert abs((1 - m.float().mean().item()) - sparsity) <= 0.5 / n + 1e-9
    g = Pruner(_net(), {"name": "magnitude", "allocation": "global"}, sparsity=sparsity)
    assert g.masks.nonzero() == int((1 - sparsity) * g.masks.numel() + 0.5)


def test_layerwise_magnitude_equals_torch_l1_unstructured():
    model = _net()
    ref = copy.deepcopy(model)
    pruner = Pruner(model, "magnitude", sparsity=0.7)
    for name, mod in [("0", ref[0]), ("3", ref[3])]:
        n = mod.weight.numel()
        keep = int(0.3 * n + 0.5)
        tprune.l1_unstructured(mod, "weight", amount=n - keep)
        assert torch.equal(mod.weight_mask.bool(), pruner.masks[f"{name}.weight"])


def test_filter_masks_equal_torch_ln_structured():
    model = _net()
    ref = copy.deepcopy(model)
    pruner = Pruner(model, {"name": "magnitude", "granularity": "filter"}, sparsity=0.5)
    tprune.ln_structured(ref[0], "weight", amount=4, n=1, dim=0)
    assert torch.equal(ref[0].weight_mask.bool(), pruner.masks["0.weight"])
    tprune.ln_structured(ref[3], "weight", amount=5, n=1, dim=0)
    assert torch.equal(ref[3].weight_mask.bool(), pruner.masks["3.weight"])


def test_iterative_masks_nest_and_same_seed_same_masks():
    model = _net()
    pruner = Pruner(model, "random", schedule="manual", sparsity=0.9, seed=3)
    prev = pruner.masks.clone()
    for s in (0.5, 0.75, 0.9):
        cur = pruner.prune(s).clone()
        assert all((cur[n] & ~prev[n]).sum() == 0 for n in cur)  # a pruned weight stays pruned
        prev = cur
    again = Pruner(_net(), "random", schedule="manual", sparsity=0.9, seed=3)
    for s in (0.5, 0.75, 0.9):
        again.prune(s)
    assert again.masks.equal(pruner.masks)
    other = Pruner(_net(), "random", schedule="manual", sparsity=0.9, seed=4)
    other.prune(0.5)
    assert not other.masks.equal(Pruner(_net(), "random", sparsity=0.5, seed=3).masks)


def test_taylor_in_a_loop_and_nm_sparsity():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = Pruner(model, {"name": "magnitude", "criterion": "taylor"}, schedule={"name": "oneshot", "at": 3},
                    sparsity=0.5)
    for step in range(4):
        x, y = _batch(step)
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); pruner.after_backward(); opt.step()
        pruner.step(opt)
    assert pruner.events == 1 and pruner.masks.sparsity() == pytest.approx(0.5, abs=1e-2)
    conv = nn.Sequential(nn.Conv2d(8, 4, 3))
    nm = Pruner(conv, {"name": "magnitude", "granularity": {"name": "nm", "n": 2, "m": 4}})
    assert nm.masks["0.weight"].movedim(1, -1).reshape(-1, 4).sum(1).eq(2).all()
    with pytest.raises(ConfigError, match="fixes sparsity"):
        Pruner(conv, {"name": "magnitude", "granularity": {"name": "nm", "n": 2, "m": 4}}, sparsity=0.9)


def test_bad_input_is_one_clear_error():
    model = _net()
    with pytest.raises(ConfigError, match="unknown method 'magnitud'; valid: campfire, drop_pruning"):
        Pruner(model, "magnitud", sparsity=0.5)
    for bad in (1.0, -0.1, "x"):
        with pytest.raises(ConfigError, match="sparsity"):
            Pruner(model, "magnitude", sparsity=bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        Pruner(model, {"name": "magnitude", "granularty": "filter"}, sparsity=0.5)
    assert isinstance(ConfigError("x"), prunelab.PrunelabError)


def test_structured_patterns_through_the_pruner():
    conv = nn.Sequential(nn.Conv2d(4, 6, 3), nn.Conv2d(6, 8, 3))
    win = Pruner(conv, {"name": "magnitude", "granularity": "window"}, sparsity=5 / 9)
    for m in win.masks.values():
        assert m.flatten(2).sum(2).eq(4).all()  # every 3x3 kernel keeps its 4 largest
    ker = Pruner(copy.deepcopy(conv), {"name": "magnitude", "granularity": {"name": "kernel", "per_filter": True}},
                 sparsity=0.5)
    for m in ker.masks.values():
        kernels = m.flatten(2).any(2)
        assert kernels.sum(1).eq(m.shape[1] // 2).all()  # the same number of kernels in every filter
    blk = Pruner(nn.Sequential(nn.Linear(8, 8)), {"name": "magnitude", "granularity": {"name": "block", "rows": 2,
                                                                                       "cols": 4}}, sparsity=0.75)
    m = blk.masks["0.weight"].reshape(4, 2, 2, 4).permute(0, 2, 1, 3).reshape(8, 8)
    assert sorted(m.sum(1).tolist()) == [0] * 6 + [8] * 2  # 2 of 8 whole 2x4 blocks kept
    ic = Pruner(copy.deepcopy(conv), {"name": "magnitude", "granularity": "input_channel"}, sparsity=0.5)
    assert ic.summary()["layers"][0]["input_channel_sparsity"] == 0.5

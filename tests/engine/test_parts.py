"""Exact results of each engine part on tiny hand-made tensors."""
import pytest
import torch
from torch import nn

from prunelab import ALLOCATIONS, CRITERIA, GRANULARITIES, SCHEDULES, ConfigError, Targets
from prunelab.engine.allocation import LayerGroups, round_keep
from prunelab.engine.criteria import Context
from prunelab.engine.selection import TopK
from prunelab.engine.topk import kth_largest, topk_counts, topk_mask


def test_targets_defaults_patterns_and_first_last():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    assert list(Targets().resolve(m)) == ["0.weight", "3.weight", "4.weight"]
    assert list(Targets(keep_first_dense=True, keep_last_dense=True).resolve(m)) == ["3.weight"]
    assert list(Targets(module_types=["Linear"], exclude=["4.*"]).resolve(m)) == ["3.weight"]
    with pytest.raises(ConfigError, match="no prunable"):
        Targets(include=["nothing*"]).resolve(m)


def test_magnitude_and_random_criteria():
    w = {"a": torch.tensor([-3.0, 1.0, -2.0])}
    assert CRITERIA.build("magnitude").scores(w, Context()).get("a").tolist() == [3.0, 1.0, 2.0]
    r1 = CRITERIA.build("random").scores(w, Context(seed=1))["a"]
    r2 = CRITERIA.build("random").scores(w, Context(seed=1))["a"]
    r3 = CRITERIA.build("random").scores(w, Context(seed=2))["a"]
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)


def test_taylor_accumulates_abs_w_times_grad():
    p = nn.Parameter(torch.tensor([2.0, -1.0, 0.5]))
    crit = CRITERIA.build("taylor")
    with pytest.raises(ConfigError):
        crit.scores({"p": p}, Context())
    for g in ([1.0, 1.0, 1.0], [-1.0, 2.0, 0.0]):
        p.grad = torch.tensor(g)
        crit.observe({"p": p})
    assert crit.scores({"p": p}, Context())["p"].tolist() == [4.0, 3.0, 0.5]


@pytest.mark.parametrize("name,shape,expect", [
    ("element", (2, 3, 2, 2), (1, 24)), ("filter", (2, 3, 2, 2), (1, 2)),
    ("input_channel", (2, 3, 2, 2), (1, 3)), ("kernel", (2, 3, 2, 2), (1, 6)),
    ("window", (2, 3, 2, 2), (6, 4)), ({"name": "nm", "n": 2, "m": 4}, (2, 8, 3, 3), (36, 4)),
    ({"name": "block", "rows": 2, "cols": 2}, (4, 6), (1, 6)),
])
def test_granularity_views_roundtrip(name, shape, expect):
    g = GRANULARITIES.build(name)
    assert g.n_groups(shape) == expect
    t = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    # a group mask with one True expands to exactly one group's elements, all of the same tensor positions
    groups = torch.zeros(expect, dtype=torch.bool)
    groups[0, 1] = True
    mask = g.expand(groups, shape)
    assert mask.sum() == g.group_size(shape)
    assert g.alive(mask).equal(groups)
    assert g.group_scores(t)[0, 1] == t[mask].sum()


def test_filter_and_input_channel_groups_are_what_they_say():
    w = torch.zeros(3, 2, 1, 1)
    w[1] = 5.0           # filter 1
    assert GRANULARITIES.build("filter").group_scores(w.abs()).tolist() == [[0.0, 10.0, 0.0]]
    w2 = torch.zeros(3, 2, 1, 1)
    w2[:, 1] = 1.0       # input channel 1
    assert GRANULARITIES.build("input_channel").group_scores(w2).tolist() == [[0.0, 3.0]]


def test_nm_and_window_check_shapes():
    with pytest.raises(ConfigError):
        GRANULARITIES.build({"name": "nm", "n": 2, "m": 4}).check("w", (4, 6))
    with pytest.raises(ConfigError):
        GRANULARITIES.build("window").check("fc", (4, 6))
    with pytest.raises(ConfigError, match="unknown parameter"):
        GRANULARITIES.build({"name": "nm", "k": 3})
    with pytest.raises(ConfigError, match="valid: block"):
        GRANULARITIES.build("voxel")


def _layer(name, n, scores=None, per_block=False, blocks=1, size=1):
    return LayerGroups(name, (n,), blocks, n // blocks, size, per_block, scores)


def test_rounding_rule_and_uniform():
    assert round_keep(0.25, 10) == 3 and round_keep(0.24, 10) == 2 and round_keep(0.0, 5) == 0
    alloc = ALLOCATIONS.build("uniform")
    assert alloc.keep_counts([_layer("a", 10), _layer("b", 4)], 0.75, 0.75) == {"a": 3, "b": 1}
    assert alloc.keep_counts([_layer("w", 12, per_block=True, blocks=3)], 0.5, 0.5) == {"w": 6}


def test_global_allocation_exact():
    a = _layer("a", 4, torch.tensor([[9.0, 1.0, 8.0, 2.0]]))
    b = _layer("b", 4, torch.tensor([[7.0, 3.0, 0.5, 0.1]]))
    assert ALLOCATIONS.build("global").keep_counts([a, b], 0.5, 0.5) == {"a": 2, "b": 2}
    # one threshold would empty b: by default its best element is kept, within the same budget
    assert ALLOCATIONS.build("global").keep_counts([a, b], 0.75, 0.75) == {"a": 1, "b": 1}
    a = _layer("a", 4, torch.tensor([[9.0, 1.0, 8.0, 2.0]]))
    b = _layer("b", 4, torch.tensor([[7.0, 3.0, 0.5, 0.1]]))
    assert ALLOCATIONS.build({"name": "global", "floor": "none"}).keep_counts([a, b], 0.75, 0.75) == {"a": 2, "b": 0}


def test_global_floor_keeps_every_output_row():
    """A classifier whose rows all score below the other layer's: each row keeps its best weight, the rest of
    the budget goes by the threshold, and the selector then keeps exactly those."""
    from prunelab import Pruner

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Linear(30, 3))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # every classifier weight below every first-layer weight
        model[1].weight[1, 5] = 2e-3  # row 1's best
    import copy

    same = copy.deepcopy(model)
    p = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.9, schedule="manual")
    p.prune(0.9)
    cls = p.masks["1.weight"]
    assert cls.sum(1).tolist() == [1, 1, 1] and bool(cls[1, 5])
    assert p.masks.nonzero() == round(0.1 * p.masks.numel())  # the budget unchanged
    assert p.masks["0.weight"].sum(1).min() >= 1  # and no row of the first layer emptied either
    bare = Pruner(same, {"name": "magnitude", "allocation": {"name": "global", "floor": "none"}}, sparsity=0.9,
                  schedule="manual")
    bare.prune(0.9)
    assert int(bare.masks["1.weight"].sum()) == 0  # what the floor prevents


def test_erk_and_explicit():
    layers = [LayerGroups("big", (100, 100), 1, 10000, 1, False), LayerGroups("small", (10, 2), 1, 20, 1, False)]
    keep = ALLOCATIONS.build("erk").keep_counts(layers, 0.9, 0.9)
    assert keep["small"] == 20  # the small layer would exceed density 1 and is kept dense
    assert keep["big"] == round_keep((0.1 * 10020 - 20) / 10000, 10000)
    ex = ALLOCATIONS.build({"name": "explicit", "sparsities": {"big": 0.5}})
    assert ex.keep_counts(layers, 0.9, 0.9) == {"big": 5000, "small": 20}
    with pytest.raises(ConfigError, match="name no prunable"):
        ALLOCATIONS.build({"name": "explicit", "sparsities": {"nope": 0.5}}).keep_counts(layers, 0.9, 0.9)
    with pytest.raises(ConfigError):
        ALLOCATIONS.build({"name": "explicit", "sparsities": {"big": 1.5}})


def test_topk_selector_nests_and_breaks_ties_by_position():
    scores = torch.tensor([[1.0, 5.0, 5.0, 3.0, 9.0]])
    alive = torch.tensor([[True, True, True, True, False]])
    sel = TopK().select(scores.clone(), alive, 2, False, Context())
    assert sel.tolist() == [[False, True, True, False, False]]   # the dead 9.0 is not revived
    per_block = TopK().select(torch.tensor([[1.0, 2.0], [4.0, 3.0]]), torch.ones(2, 2, dtype=torch.bool), 2, True,
                              Context())
    assert per_block.tolist() == [[False, True], [True, False]]


def test_large_topk_matches_sort(monkeypatch):
    import prunelab.engine.topk as tk
    monkeypatch.setattr(tk, "SMALL", 1000)  # force the sampled-bracket path on a small tensor
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(30000, generator=g), torch.randn(50000, generator=g).abs()]
    flat = torch.cat(chunks)
    for k in (1, 17, 40000, 79999):
        assert kth_largest(chunks, k) == flat.sort(descending=True).values[k - 1].item()
    counts, v = topk_counts(chunks, 40000)
    assert sum(counts) == 40000 and v == kth_largest(chunks, 40000)
    assert topk_mask(chunks[0], counts[0], hint=v).sum() == counts[0]
    for c, k in zip(chunks, counts):  # the hint taken as it is and the search agree, ties at v or not
        assert torch.equal(topk_mask(c, k, hint=v), topk_mask(c, k))
    assert topk_mask(chunks[0], 5, hint=v).sum() == 5  # a wrong hint is checked and ignored
    m = topk_mask(torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0] * 400), 1000)  # ties at the threshold
    assert m.sum() == 1000


def test_schedules():
    it = SCHEDULES.build({"name": "iterative", "sparsity": 0.75, "rounds": 2, "interval": 10})
    assert [s for _, s in it.events()] == pytest.approx([0.5, 0.75]) and it.events()[1][0] == 10
    cubic = SCHEDULES.build({"name": "cubic", "sparsity": 0.8, "start": 0, "end": 10, "frequency": 5})
    assert cubic.events() == [(0, 0.0), (5, pytest.approx(0.7)), (10, 0.8)]
    assert cubic.target(3) is None and cubic.frozen(10) and not cubic.frozen(9)
    assert SCHEDULES.build({"name": "oneshot", "sparsity": 0.3, "at": 4}).events() == [(4, 0.3)]
    for bad in ({"name": "oneshot", "sparsity": 1.0}, {"name": "cubic", "start": 5, "end": 5},
                {"name": "iterative", "rounds": 0}):
        with pytest.raises(ConfigError):
            SCHEDULES.build(bad)


def test_learning_rate_schedules_including_hold_then_decay():
    from prunelab.training import OptimConfig, lr_at

    step = OptimConfig(epochs=6, lr=1.0, lr_schedule="step", step_size=2, gamma=0.5)
    assert [lr_at(step, e) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    hold = OptimConfig(epochs=8, lr=1.0, lr_schedule="multistep", milestones=[0.5], hold_epochs=4)
    assert [lr_at(hold, e) for e in range(8)] == [1.0] * 6 + [pytest.approx(0.1)] * 2
    cos = OptimConfig(epochs=4, lr=2.0, lr_schedule="cosine", warmup_epochs=1)
    assert lr_at(cos, 0) == 2.0 and lr_at(cos, 1) == 2.0 and lr_at(cos, 3) < 1.0


def test_diverged_training_stops_with_one_sentence():
    import torch

    from prunelab.errors import TrainingDiverged
    from prunelab.training import OptimConfig, Trainer, build_optimizer

    torch.manual_seed(0)
    m = torch.nn.Linear(4, 2)
    cfg = OptimConfig(epochs=1, lr=1e3, momentum=0.0)  # the largest learning rate a recipe accepts
    x, y = torch.randn(8, 4) * 1e35, torch.randint(0, 2, (8,))
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        Trainer(m, build_optimizer(m, cfg), cfg, [(x, y)] * 20, progress=False).fit()

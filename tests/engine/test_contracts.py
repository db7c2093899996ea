"""The contracts every registered part keeps: it builds from its name, rejects unknown parameters with the valid
ones listed, and (criteria, granularities, allocations, selectors, schedules, methods) produces masks that
meet its budget on a tiny model. A new registered part is tested here without a line added."""
import dataclasses

import pytest
import torch
from torch import nn

from prunelab import ConfigError, Pruner
from prunelab.engine.allocation import ALLOCATIONS
from prunelab.engine.criteria import CRITERIA, Context
from prunelab.experiment.stages import STAGES
from prunelab.engine.granularity import GRANULARITIES
from prunelab.methods import METHODS
from prunelab.engine.schedules import SCHEDULES
from prunelab.engine.selection import SELECTORS

REGISTRIES = [CRITERIA, GRANULARITIES, ALLOCATIONS, SELECTORS, SCHEDULES, METHODS, STAGES]
# parameters a part cannot be built without (everything else has a default)
REQUIRED = {("allocation", "explicit"): {"sparsities": {}}}


def _net() -> nn.Module:
    """Two 2x2 convolutions with BatchNorm and two linear layers: 0.5 of every group count is an integer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 2), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.Flatten(), nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 8))
    with torch.no_grad():  # BatchNorm scales interleaved across the two layers: 0.1 .. 0.8 and 0.15 .. 0.85
        net[1].weight.copy_(torch.linspace(0.1, 0.8, 8))
        net[4].weight.copy_(torch.linspace(0.15, 0.85, 8).flip(0))
    return net


def _x(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, 6, 6, generator=torch.Generator().manual_seed(seed))


def _tiny_llama() -> nn.Module:
    """Two LLaMA blocks (grouped-query attention: 4 heads, 2 kv groups; MLP width 16) from a config."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, use_cache=False)
    return transformers.LlamaForCausalLM(config)


def _tokens(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 32, (n, 8), generator=torch.Generator().manual_seed(seed))


def _subject(method):
    """(model, inputs(n, seed), output -> tensor) the method is tried on: the tiny net, or for a method that
    removes units of transformer blocks (it declares ``unit_kinds``) a tiny LLaMA."""
    if hasattr(METHODS.build(method), "unit_kinds"):
        return _tiny_llama(), _tokens, lambda out: out.logits
    return _net(), _x, lambda out: out


def _spec(registry, name: str) -> dict:
    return {"name": name, **REQUIRED.get((registry.kind, name), {})}


@pytest.mark.parametrize("registry,name", [(r, n) for r in REGISTRIES for n in r.names()],
                         ids=lambda v: v if isinstance(v, str) else v.kind)
def test_every_part_builds_and_rejects_unknown_parameters(registry, name):
    part = registry.build(_spec(registry, name))
    assert registry.build(part) is part  # an instance passes through
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) no_such_option .*valid:"):
        registry.build({**_spec(registry, name), "no_such_option": 1})
    with pytest.raises(ConfigError, match="valid:"):
        registry.build(f"{name}_misspelt")


def _final_masks(method, sparsity=0.5, **kw) -> Pruner:
    """One event to ``sparsity`` on the tiny net, with whatever the method declares it needs handed over."""
    model, x, out = _subject(method)
    pruner = Pruner(model, method=method, schedule="manual", sparsity=sparsity, seed=3,
                    example_inputs=x(1), **kw)
    needs = pruner.needs
    if needs.calibration_samples:
        pruner.calibrate([x(8, s) for s in range(4)])
    for i in range(needs.gradient_batches):
        model.zero_grad()
        out(model(x(4, i))).square().mean().backward()
        pruner.after_backward()
    pruner.prune(sparsity, final=True)
    return pruner


@pytest.mark.parametrize("name", [n for n in CRITERIA.names() if n != "bn_scale"])
def test_every_criterion_meets_an_exact_per_layer_budget(name):
    pruner = _final_masks({"name": "magnitude", "criterion": name})
    for row in pruner.masks.layer_stats():
        assert row["nonzero"] == row["numel"] // 2, (name, row["name"])


def test_bn_scale_scores_come_from_the_context_and_fail_without_it():
    w = {"a": torch.ones(3, 2)}
    scores = CRITERIA.build("bn_scale").scores(w, Context(bn_scales={"a": torch.tensor([1.0, -4.0, 2.0])}))
    assert torch.equal(scores["a"], torch.tensor([[0.5, 0.5], [2.0, 2.0], [1.0, 1.0]]))  # |gamma| / row size
    with pytest.raises(ConfigError, match="slimming"):
        CRITERIA.build("bn_scale").scores(w, Context())


def _groups_alive(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Per (filter, input channel) kernel: how many of its weights are alive (linear: runs of 4 inputs)."""
    if mask.dim() == 4:
        return mask.flatten(2).sum(2)
    return mask.reshape(mask.shape[0], -1, 4).sum(2)


@pytest.mark.parametrize("name", GRANULARITIES.names())
def test_every_granularity_meets_its_budget_in_its_own_unit(name):
    pruner = _final_masks({"name": "magnitude", "granularity": name})
    masks = pruner.masks
    if name == "combined":  # two roundings (kernels, then windows): each within half a group of the target
        assert masks.sparsity() == pytest.approx(0.5, abs=0.1)
        return
    assert masks.sparsity() == pytest.approx(0.5, abs=1e-12), name
    for n, m in masks.items():
        if name == "filter":
            assert int(m.flatten(1).any(1).sum()) == m.shape[0] // 2
        elif name == "input_channel":
            assert int(m.transpose(0, 1).flatten(1).any(1).sum()) == m.shape[1] // 2
        elif name == "window":  # every kernel (linear: run of 4 inputs) keeps the same count: 2
            assert (_groups_alive(m, n) == 2).all()
        elif name == "nm":  # 2 of every 4 consecutive input channels, at every kernel position
            assert (m.movedim(1, -1).reshape(*m.movedim(1, -1).shape[:-1], -1, 4).sum(-1) == 2).all()
        elif name == "kernel" and m.dim() == 4:  # whole kernels: all or nothing
            assert ((_groups_alive(m, n) == 0) | (_groups_alive(m, n) == 4)).all()


@pytest.mark.parametrize("name", ALLOCATIONS.names())
def test_every_allocation_meets_the_overall_budget(name):
    spec = {"name": name}
    if name == "explicit":  # per layer by name: the rest at the default
        spec.update(sparsities={"0.weight": 0.25, "7.weight": 0.75}, default=0.5)
    pruner = _final_masks({"name": "magnitude", "allocation": spec})
    rows = {r["name"]: r for r in pruner.masks.layer_stats()}
    if name == "explicit":
        assert rows["0.weight"]["nonzero"] == 96 and rows["7.weight"]["nonzero"] == 512
        assert rows["3.weight"]["nonzero"] == 128 and rows["9.weight"]["nonzero"] == 64  # the default
    else:
        total = pruner.masks.numel()
        assert abs(pruner.masks.nonzero() - total / 2) <= len(rows) / 2  # one rounding per tensor at most
    if name == "uniform":
        assert all(r["nonzero"] == r["numel"] // 2 for r in rows.values())


@pytest.mark.parametrize("name", SELECTORS.names())
def test_every_selector_meets_the_budget_at_the_final_event(name):
    pruner = _final_masks({"name": "magnitude", "selector": name})
    for row in pruner.masks.layer_stats():
        assert row["nonzero"] == row["numel"] // 2


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_ends_at_its_sparsity(name):
    sched = SCHEDULES.build({"name": name, "sparsity": 0.8})
    events = sched.events()
    if name == "manual":
        assert events == [] and not sched.frozen(10 ** 6)
        return
    steps = [s for s, _ in events]
    targets = [t for _, t in events]
    assert steps == sorted(steps) and targets == sorted(targets) and targets[-1] == 0.8
    assert sched.frozen(steps[-1]) and (len(steps) == 1 or not sched.frozen(steps[-1] - 1))
    model = _net()
    pruner = Pruner(model, "magnitude", schedule=sched)
    while not sched.frozen(pruner.step_count):
        pruner.step()
    assert pruner.events == len(events) and pruner.masks.sparsity() == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_meets_its_budget_on_a_tiny_model(name):
    pruner = _final_masks(name)
    masks = pruner.masks
    if name == "pca":  # its sparsity is an outcome: the masks are its plan, units and densities alike
        plan = pruner.history[-1]["plan"]
        for n, m in masks.items():
            layer = n.rsplit(".", 1)[0]
            assert int(m.flatten(1).any(1).sum()) <= plan[layer]["kept_units"]
            assert m.float().mean().item() == pytest.approx(plan[layer]["density"])
        assert 0 < masks.sparsity() < 1
        return
    if hasattr(pruner.method, "unit_kinds"):  # half the units of every kind in every block, the rest whole
        units = pruner.summary()["channels"]["units"]
        assert set(units) == set(pruner.method.unit_kinds)
        for u in units.values():
            per_group = u["prunable"] // len(u["kept"])
            assert u["removed"] and u["kept"] == [per_group // 2] * len(u["kept"])
        return
    if name == "slimming":  # half of all channels by one threshold on |gamma|: the four largest of each layer
        alive = {n: m.flatten(1).any(1) for n, m in masks.items()}
        assert list(alive) == ["0.weight", "3.weight"]
        assert alive["0.weight"].tolist() == [False] * 4 + [True] * 4
        assert alive["3.weight"].tolist() == [True] * 4 + [False] * 4
        return
    for row in masks.layer_stats():
        assert row["nonzero"] == row["numel"] // 2, (name, row["name"])
    if name == "l1_filter":
        assert "9.weight" not in masks and all(r["filter_sparsity"] == 0.5 for r in masks.layer_stats())
    if name == "campfire":  # first and last layers dense by default
        assert list(masks) == ["3.weight", "7.weight"]


def _fields(method) -> dict:
    """A method's attributes, by identity: a value replaced or grown between hooks shows as a difference."""
    return {k: (id(v), len(v) if isinstance(v, (dict, list, set)) else None) for k, v in vars(method).items()
            if not k.endswith("_")}  # the built parts (criterion_ ...) hold their own observed data (gradients)


def _tensors(v, path="") -> dict:
    """Every tensor inside ``v`` (nested dicts and lists), by path: what an attribute holds, empty ones ignored."""
    if isinstance(v, torch.Tensor):
        return {path: v}
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple)) else ()
    return {p: t for k, x in items for p, t in _tensors(x, f"{path}/{k}").items()}


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_keeps_no_state_between_its_hooks_but_what_it_declares(name):
    """Decisions are returned, not stored: after a pruning event, whatever of the method changed is exactly
    the state it declares it carries to the next event (``state_tensors``, saved with checkpoints): a fresh
    method given that state holds the same tensors."""
    model, x, out = _subject(name)
    pruner = Pruner(model, method=name, schedule="manual", sparsity=0.5, seed=3, example_inputs=x(1))
    method = pruner.method
    if pruner.needs.calibration is not None:
        pruner.calibrate([x(8, s) for s in range(4)])
    for i in range(pruner.needs.gradient_batches):
        model.zero_grad()
        out(model(x(4, i))).square().mean().backward()
        pruner.after_backward()
    before = _fields(method)
    pruner.prune(0.5, final=True)
    after = _fields(method)
    fresh = type(method)(**{f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.init})
    fresh.load_state_tensors(method.state_tensors())
    for k in before.keys() | after.keys():
        if before.get(k) != after.get(k):
            mine, declared = _tensors(getattr(method, k)), _tensors(getattr(fresh, k))
            assert mine.keys() == declared.keys() and all(torch.equal(mine[p], declared[p]) for p in mine), \
                f"{name} keeps {k} between hooks"

"""The run layer's contracts: recipe identity, stage plans, checkpoint and method-state error paths, method hooks
that work without a Pruner, and model construction that leaves the global RNG alone."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prunelab import CheckpointError, ConfigError, Masks, Pruner
from prunelab.structure.channels import ChannelGraph
from prunelab.engine.criteria import Context
from prunelab.experiment import RunContext, Runner, builtin_recipes, load_recipe, plan
from prunelab.experiment import paths
from prunelab.experiment.checkpoint import load_checkpoint, load_method_state, save_checkpoint
from prunelab.methods import build_method
from prunelab.methods.base import PruneView
from prunelab.models import build_model, reinit

# A change here moves a built-in recipe's runs to new folders (and away from the shared dense training): it must
# be deliberate, and said in the change's note. (fingerprint, dense fingerprint)
FINGERPRINTS = {
    "gpt2_pystdlib_dense": ("539bdd5f23", "bc46130475"),
    "gpt2_pystdlib_magnitude": ("252e5b9400", "bc46130475"),
    "gpt2_pystdlib_sparsegpt": ("0389d8e7fb", "bc46130475"),
    "gpt2_pystdlib_wanda": ("a3af51ba02", "bc46130475"),
    "lenet300_100_mnist_drop": ("0c160bf0de", "878faa5d03"),
    "lenet300_100_mnist_magnitude": ("af55942ff5", "878faa5d03"),
    "lenet300_100_mnist_pca": ("5cc082da8d", "878faa5d03"),
    "lenet300_100_mnist_sparsegpt": ("d82f7c10f6", "878faa5d03"),
    "lenet5_mnist_campfire": ("b75039c301", "0a7f5ff86b"),
    "lenet5_mnist_drop": ("51df069dbd", "aee1185902"),
    "lenet5_mnist_dsnot": ("f2f20dc08f", "aee1185902"),
    "lenet5_mnist_magnitude": ("01bc3035da", "aee1185902"),
    "lenet5_mnist_mask_study": ("f43b02af54", "7d82435e02"),
    "lenet5_mnist_pca": ("190617c01f", "aee1185902"),
    "lenet5_mnist_rethinking": ("ede039b8d3", "0d2c99cfa1"),
    "lenet5_mnist_ria": ("6cf8a28717", "aee1185902"),
    "lenet5_mnist_sparsegpt": ("739c7db0c1", "aee1185902"),
    "lenet5_mnist_wanda": ("5b2b40fa4e", "aee1185902"),
    "llama_pystdlib_dense": ("1bf088ee54", "1d53a91929"),
    "llama_pystdlib_dsnot": ("1d63400488", "1d53a91929"),
    "llama_pystdlib_owl": ("1d09b57cd7", "1d53a91929"),
    "llama_pystdlib_ria": ("26d0810914", "1d53a91929"),
    "lenet5_mnist_owl": ("cd208c0b2f", "aee1185902"),
    "llama_pystdlib_units": ("ef793d8549", "1d53a91929"),
    "llama_wikitext2_sparsegpt": ("69cfd42872", "dfda424391"),
    "llama_wikitext2_wanda": ("3ab60cd474", "dfda424391"),
    "quickstart": ("299bbcfb2e", "5e0d98cc2b"),
    "resnet110_cifar10_l1_b": ("bcf830644b", "908264ec7f"),
    "resnet20_cifar10_campfire": ("8e9a672ed0", "321bcf9bee"),
    "resnet50_imagenet_campfire": ("ada1b5b90c", "12bc3569c7"),
    "resnet56_cifar10_l1_a": ("c0ebda2e78", "8320c47f76"),
    "resnet56_cifar10_l1_b": ("cb3d14404d", "8320c47f76"),
    "vgg16_cifar10_drop": ("d741e20546", "ab2cce5201"),
    "vgg16_cifar10_l1_a": ("f51e080e9b", "a0fe62ed0f"),
    "vgg16_cifar10_pca": ("769220224e", "ab2cce5201"),
    "vgg19_cifar10_slimming": ("c131622921", "5092e91b6c"),
    "vgg19_cifar10_unstructured": ("8af98f0902", "55a5f58882"),
    "vggs_fashion_slimming": ("f2e28bb2df", "fce8851eaf"),
}


def test_every_builtin_recipe_has_its_pinned_fingerprint():
    assert sorted(builtin_recipes()) == sorted(FINGERPRINTS)
    for name, pinned in FINGERPRINTS.items():
        r = load_recipe(name)
        assert (r.fingerprint(), r.dense_fingerprint()) == pinned, name


SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
          "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "imagenet": ((3, 224, 224), 1000),
          "pystdlib": ((128,), 256), "wikitext2": ((2048,), 32000)}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_every_builtin_recipe_plans_its_stages_and_builds_its_pruner(name):
    """Recipes for machines with other data (CIFAR, ImageNet) are checked here too, without their data."""
    r = load_recipe(name)
    ctx = RunContext(r, "unused", log=lambda m: None)
    stages = [s.name for s in plan(ctx)]
    p = r.prune
    if p is None:  # a dense recipe: one stage
        assert stages == ["dense"]
        return
    rounds = 1 if p.schedule.name == "oneshot" else p.schedule.rounds
    expected = ["dense"] + (["gradual"] if p.schedule.name == "cubic" else [f"round_{i:02d}" for i in range(1, rounds + 1)])
    method = build_method(p.method)
    expected += ["shrunk"] if method.channels else []
    expected += [f"control_{c}" for c in p.controls if c != "finetune"]
    assert stages == expected
    shape, classes = SHAPES[r.data.name]
    if r.model.name.startswith("hf:./"):  # a model folder the user brings (LLaMA): checked to the plan only
        return
    model = build_model(r.model.name, shape, classes, seed=0, **r.model.kwargs)
    pruner = Pruner(model, method=p.method, schedule="manual", sparsity=p.sparsity, targets=p.targets,
                    example_inputs=torch.zeros(1, *shape, dtype=torch.int64 if r.data.name == "pystdlib" else None))
    assert pruner.params and pruner.masks.sparsity() == 0.0  # something to prune, nothing pruned yet
    assert set(pruner.params) <= {n for n, _ in model.named_parameters()}


def test_rounds_chain_their_inputs_and_only_the_last_is_final():
    ctx = RunContext(load_recipe("quickstart", ["prune.schedule.rounds=3"]), "unused")
    rounds = [s for s in plan(ctx) if s.name.startswith("round_")]
    assert [(s.source, s.final) for s in rounds] == [("dense", False), ("round_01", False), ("round_02", True)]
    assert [t for _, t in ctx.schedule.events()] == pytest.approx([1 - 0.05 ** (r / 3) for r in (1, 2, 3)])


def test_model_construction_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model("lenet300_100", (1, 8, 8), 10, seed=5)
    reinit(a, 7)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model("lenet300_100", (1, 8, 8), 10, seed=5)
    c = reinit(build_model("lenet300_100", (1, 8, 8), 10, seed=0), 7)
    assert not torch.equal(a.fc1.weight, b.fc1.weight) and torch.equal(a.fc1.weight, c.fc1.weight)
    torch.manual_seed(5)
    assert torch.equal(build_model("lenet300_100", (1, 8, 8), 10).fc1.weight, b.fc1.weight)  # seed=None: global


def test_stop_after_an_unknown_stage_is_refused_before_any_work(tmp_path):
    runner = Runner(load_recipe("quickstart"), tmp_path / "r", progress=False, log=lambda m: None,
                    stop_after="round_9")
    with pytest.raises(ConfigError, match="round_9.*dense, round_01"):
        runner.run()
    assert not (tmp_path / "r").exists()


# -- checkpoint and method-state error paths -------------------------------------------------------------
def _lin():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_checkpoint_of_another_model_or_shape_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c", _lin())
    with pytest.raises(CheckpointError, match="another model"):
        load_checkpoint(tmp_path / "c", nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(CheckpointError, match=r"0\.(weight|bias) has shape \(3.*, the model \(5"):
        load_checkpoint(tmp_path / "c", nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)))
    (tmp_path / "c" / paths.STATE).write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "c", _lin())


def test_optimizer_state_that_does_not_fit_is_refused(tmp_path):
    model = _lin()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c", model, optimizer=opt)
    other = torch.optim.SGD(list(model.parameters())[:2], lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_checkpoint(tmp_path / "c", model, other)


def test_method_state_error_paths(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / paths.METHOD_STATE), metadata={"format": "something/1"})
    with pytest.raises(CheckpointError, match="not a prunelab method state file"):
        load_method_state(tmp_path)
    assert load_method_state(tmp_path / "none") == {}
    with pytest.raises(CheckpointError, match="method 'magnitude' does not keep"):
        build_method("magnitude").load_state_tensors({"ever_revived:0.weight": torch.zeros(2, dtype=torch.bool)})
    with pytest.raises(CheckpointError, match="'bogus:0.weight' that drop_pruning does not keep"):
        build_method("drop_pruning").load_state_tensors({"bogus:0.weight": torch.zeros(2)})
    pruner = Pruner(_lin(), "magnitude", schedule="manual", sparsity=0.5)
    with pytest.raises(CheckpointError, match="step and event counters"):
        pruner.load_state({"events": 1}, pruner.masks)
    with pytest.raises(CheckpointError, match="does not keep"):
        pruner.load_state({"step_count": 0, "events": 1}, pruner.masks, method_state={"a": torch.zeros(1)})


def test_drop_pruning_state_round_trips_through_a_checkpoint(tmp_path):
    model = _lin()
    spec = {"name": "drop_pruning", "p_out": 0.9, "p_in": 0.5, "revive_value": "pruned"}
    pruner = Pruner(model, spec, schedule={"name": "iterative", "rounds": 4}, sparsity=0.5, auto_prune=False)
    for event in range(2):
        pruner.prune_event(event)
    save_checkpoint(tmp_path / "c", model, pruner.masks, extra={"pruner": pruner.state()},
                    method_state=pruner.method.state_tensors())
    again = Pruner(_lin(), spec, schedule={"name": "iterative", "rounds": 4}, sparsity=0.5, auto_prune=False)
    masks, state = load_checkpoint(tmp_path / "c", again.model)
    again.load_state(state["pruner"], masks, method_state=load_method_state(tmp_path / "c"))
    a, b = pruner.method.state_tensors(), again.method.state_tensors()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a) and again.events == 2


# -- method hooks receive a view and return data ----------------------------------------------------------
def _bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.3, -2.0, 1.0, 0.1]))
        net[1].bias.fill_(0.5)
    return net


def _view(net, names, channels=False):
    params = dict(net.named_parameters())
    targets = {n: params[n] for n in names}
    graph = ChannelGraph(net, torch.zeros(1, 2, 6, 6)) if channels else None
    return PruneView(net, targets, Masks.dense(targets), graph)


def test_slimming_hands_its_bn_scales_over_as_data():
    method = build_method("slimming")
    out = method.before_prune(_view(_bn_net(), ["0.weight"], channels=True), Context())
    assert list(out) == ["bn_scales"] and torch.equal(out["bn_scales"]["0.weight"], torch.tensor([0.3, -2.0, 1.0, 0.1]))
    scores = method.criterion_.scores({"0.weight": torch.zeros(4, 2, 3, 3)}, Context(**out))
    assert scores["0.weight"][1].sum().item() == pytest.approx(2.0)  # a filter's scores sum to |gamma|


def test_drop_pruning_returns_the_values_of_revived_weights_instead_of_writing_them():
    net = _lin()
    method = build_method({"name": "drop_pruning", "revive_value": "pruned"})
    view = _view(net, ["0.weight"])
    w = net[0].weight.detach().clone()
    old = Masks({"0.weight": torch.ones(3, 4, dtype=torch.bool)})
    gone = Masks({"0.weight": torch.tensor([[0, 1, 1, 1]] * 3, dtype=torch.bool)})
    ctx = Context(**method.before_prune(view, Context()))  # the weights before the event: data, not state
    first = method.after_prune(view, old, gone, ctx)
    assert first.record["dropped"] == 3 and first.values == {}
    ctx = Context(event=1, **method.before_prune(view, Context(event=1)))
    back = method.after_prune(view, gone, old, ctx)  # the pruned column comes back
    where, value = back.values["0.weight"]
    assert where[:, 0].all() and not where[:, 1:].any() and torch.equal(value[:, 0], w[:, 0])
    assert torch.equal(net[0].weight, w)  # the hook wrote nothing


def test_pca_decides_from_statistics_in_two_passes_and_sees_its_units_removed():
    """Pass 0 (output moments) decides the units; the Pruner writes them, biases and BatchNorm entries included;
    pass 1 (input moments) then sees the removed channels as zeros, and step A's masks come back on the Context."""
    from prunelab.methods.pca import PCAPruning

    seen = []

    class Spy(PCAPruning):
        def decide(self, view, ctx):
            seen.append((ctx.calibration_pass, ctx.group, dict(ctx.decided), dict(ctx.input_stats)))
            return super().decide(view, ctx)

    net = _bn_net()
    batches = [torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    p = Pruner(net, Spy(samples=16, tau=0.8), schedule="manual", sparsity=0.5, example_inputs=batches[0])
    p.calibrate(batches)
    p.prune(0.5)
    assert [(i, g) for i, g, _, _ in seen] == [(0, ("0.weight", "4.weight")), (1, ("0.weight", "4.weight"))]
    units = seen[1][2]["0.weight"].reshape(4, -1).any(1)  # step A's channels of layer 0
    assert not units.all() and set(seen[1][2]) == {"0.weight", "4.weight"}
    mean_abs = seen[1][3]["4.weight"].inputs.mean_abs().reshape(4, 16)
    assert (mean_abs[~units] == 0).all() and (mean_abs[units] > 0).all()
    assert (net[0].bias[~units] == 0).all() and (net[1].bias[~units] == 0).all()
    assert torch.equal(p.masks["0.weight"].reshape(4, -1).any(1), units)


def test_pruner_sets_the_values_a_method_returns(tmp_path):
    net = _lin()
    spec = {"name": "drop_pruning", "p_out": 1.0, "p_in": 1.0, "q": 0.5, "revive_value": "pruned"}
    pruner = Pruner(net, spec, schedule={"name": "iterative", "rounds": 3}, sparsity=0.5, auto_prune=False)
    w0 = net[0].weight.detach().clone()
    pruner.prune_event(0)  # drops the lowest half of each tensor (p_out = 1), revives nothing yet
    dropped = ~pruner.masks["0.weight"]
    assert dropped.any() and (net[0].weight[dropped] == 0).all()
    pruner.prune_event(1)  # p_in = 1: every pruned weight comes back at its pruned value
    back = dropped & pruner.masks["0.weight"]
    assert back.any() and torch.equal(net[0].weight[back], w0[back])
    assert json.loads(json.dumps(pruner.history))[-1]["revived"] > 0

"""Channel methods, shrink, the width manifest and the Rethinking controls."""
import json

import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.cli import main
from prunelab.errors import CheckpointError, ConfigError
from prunelab.experiment import Runner, load_recipe, run_dir_for
from prunelab.experiment.controls import scratch_b_budget
from prunelab.export.shrunk import load_shrunk, model_spec, save_shrunk
from prunelab.inputs import max_output_diff
from prunelab.structure.surgery import ShrinkError, shrink
from prunelab.methods.structured import PRESETS
from prunelab.models import build_model
from prunelab.training import OptimConfig, Trainer, build_optimizer


def _random_bn(model):
    """BatchNorm statistics and affine terms far from their init, so a missed shift would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


class Concat(nn.Module):
    """Two conv branches concatenated, then a conv and a linear head."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(11)
        self.c = nn.Conv2d(11, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(torch.relu(self.c(x)).flatten(1))


@pytest.mark.parametrize("make,allocation", [
    (lambda: build_model("resnet20", (3, 16, 16), 10, shortcut="B"), "global"),
    (lambda: Concat(), "uniform"),
])
def test_masked_and_shrunk_models_agree(make, allocation):
    torch.manual_seed(0)
    model = _random_bn(make())
    x = torch.randn(1, 3, 16, 16) if not isinstance(model, Concat) else torch.randn(1, 3, 8, 8)
    p = Pruner(model, method={"name": "l1_filter", "allocation": allocation}, sparsity=0.5, example_inputs=x)
    removed = p.channels.removed(p.masks)
    assert removed, "the test needs channels that are actually removed"
    small, widths = shrink(model, p.masks, x)
    assert widths and sum(q.numel() for q in small.parameters()) < sum(q.numel() for q in model.parameters())
    check = torch.randn((16,) + tuple(x.shape[1:]))
    assert max_output_diff(model, small, check) <= 1e-5
    if isinstance(model, Concat):  # channels of both branches went, the concatenation stayed consistent
        assert small.bn.num_features == small.a.out_channels + small.b.out_channels < 11
    unchecked, widths2 = shrink(model, p.masks, x, check=False)  # the same model, without the float64 check
    assert widths2 == widths and torch.equal(unchecked(check), small(check))
    with pytest.raises(ShrinkError, match="another model"):
        shrink(small, p.masks, x, graph=p.channels)
    in_place, widths3 = shrink(model, p.masks, x, graph=p.channels)  # the pruner's own trace, no copy
    assert in_place is model and widths3 == widths and torch.equal(in_place(check), small(check))


def test_coupled_residual_channels_are_chosen_as_one_group():
    """Naming one branch of a residual stream prunes the stream: every producer drops the same channels."""
    model = build_model("resnet20", (3, 16, 16), 10, shortcut="B")
    x = torch.zeros(1, 3, 16, 16)
    p = Pruner(model, method={"name": "l1_filter", "allocation": {
        "name": "explicit", "sparsities": {"layers.0.conv2.weight": 0.5}}}, sparsity=0.5, example_inputs=x)
    stream = ["conv1.weight"] + [f"layers.{b}.conv2.weight" for b in range(3)]  # stage 1 adds into conv1's channels
    dead = [set((~p.masks[n].flatten(1).any(1)).nonzero().flatten().tolist()) for n in stream]
    assert len(dead[0]) == 8 and all(d == dead[0] for d in dead)
    assert [len(v) for v in p.channels.removed(p.masks).values()] == [8]  # the one group, really removed
    untouched = [n for n in p.params if n not in stream]
    assert all(p.masks[n].all() for n in untouched)
    assert p.summary()["channels"]["removed"] == 8


def test_companions_stay_zero_while_training():
    torch.manual_seed(0)
    model = build_model("vgg11", (3, 16, 16), 4, widths=[8, "M", 8, "M", 8])
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 4, (32,))
    p = Pruner(model, method="l1_filter", sparsity=0.5, example_inputs=x[:1])
    cfg = OptimConfig(epochs=1, lr=0.1, weight_decay=0.0)
    opt = build_optimizer(model, cfg)
    Trainer(model, opt, cfg, [(x, y)] * 3, pruner=p, progress=False).fit()
    bn = model.features[1]
    dead = ~p.masks["features.0.weight"].reshape(8, -1).any(1)
    assert dead.sum() == 4 and (bn.weight[dead] == 0).all() and (bn.bias[dead] == 0).all()
    small, _ = shrink(model, p.masks, x[:1])
    assert max_output_diff(model, small, x) <= 1e-5


def test_shrink_refuses_a_model_whose_masks_leave_batchnorm_shifts():
    torch.manual_seed(0)
    model = _random_bn(build_model("vgg11", (3, 16, 16), 4, widths=[8, "M", 8]))
    p = Pruner(model, method={"name": "magnitude", "granularity": "filter"}, sparsity=0.5)  # no channels option
    with pytest.raises(ShrinkError, match="bias or normalization shift"):
        shrink(model, p.masks, torch.zeros(1, 3, 16, 16))
    shrink(model, p.masks, torch.zeros(1, 3, 16, 16), check=False)  # the caller's word: no comparison made


def test_channel_method_needs_example_inputs():
    with pytest.raises(ConfigError, match="example_inputs"):
        Pruner(build_model("lenet5", (1, 28, 28), 10), method="l1_filter", sparsity=0.5)


def test_width_manifest_rebuilds_the_shrunk_model_exactly(tmp_path):
    torch.manual_seed(0)
    model = _random_bn(build_model("resnet20", (3, 16, 16), 10, shortcut="B"))
    x = torch.zeros(1, 3, 16, 16)
    p = Pruner(model, method={"name": "l1_filter", "preset": None, "allocation": "global"}, sparsity=0.5,
               example_inputs=x)
    small, widths = shrink(model, p.masks, x)
    path = tmp_path / "shrunk.safetensors"
    save_shrunk(path, small, widths, model_spec("resnet20", {"shortcut": "B"}, (3, 16, 16), 10))
    rebuilt, manifest = load_shrunk(path)
    assert manifest["widths"] == widths
    check = torch.randn(8, 3, 16, 16)
    assert max_output_diff(small, rebuilt, check) == 0.0
    from safetensors.torch import load_file, save_file

    first = next(n for n, w in widths.items() if "out_channels" in w)
    bad = json.loads(json.dumps(manifest))
    bad["widths"][first]["out_channels"] += 1  # a manifest that no longer matches the weights
    save_file(load_file(path), path, metadata={"format": "prunelab-shrunk/1", "manifest": json.dumps(bad)})
    with pytest.raises(CheckpointError, match="does not match its width manifest"):
        load_shrunk(path)
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError):
        load_shrunk(path)


def test_slimming_ranks_channels_by_gamma_globally():
    model = build_model("vgg11", (3, 16, 16), 4, widths=[4, "M", 4])
    with torch.no_grad():
        model.features[1].weight.copy_(torch.tensor([0.1, 0.9, 0.2, 0.8]))
        model.features[5].weight.copy_(torch.tensor([0.3, 0.05, 0.7, 0.6]))
    p = Pruner(model, method="slimming", sparsity=0.5, example_inputs=torch.zeros(1, 3, 16, 16))
    alive = [p.masks[n].reshape(4, -1).any(1).tolist() for n in ("features.0.weight", "features.4.weight")]
    assert alive == [[False, True, False, True], [False, False, True, True]]  # 4 of 8 channels by |gamma|
    model = build_model("vgg11", (3, 16, 16), 4, widths=[4, "M", 4])
    with torch.no_grad():
        model.features[1].weight.copy_(torch.tensor([0.5, 0.9, 0.6, 0.8]))
        model.features[5].weight.fill_(0.01)  # every channel of the second layer under the threshold
    p = Pruner(model, method="slimming", sparsity=0.5, example_inputs=torch.zeros(1, 3, 16, 16))
    assert int(p.masks["features.4.weight"].reshape(4, -1).any(1).sum()) == 1  # one kept: the model stays whole


def test_bn_l1_term_only_in_sparsity_training():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    grads = {}
    for s in (0.0, 0.01):
        torch.manual_seed(0)
        model = build_model("vgg11", (3, 8, 8), 4, widths=[4, "M", 4])
        cfg = OptimConfig(epochs=1, lr=1e-9, momentum=0.0, weight_decay=0.0, bn_l1=s)
        opt = build_optimizer(model, cfg)
        Trainer(model, opt, cfg, [(x, y)], progress=False).fit()
        grads[s] = model.features[1].weight.grad.clone()
    assert torch.allclose(grads[0.01] - grads[0.0], 0.01 * torch.sign(model.features[1].weight), atol=1e-6)
    recipe = load_recipe("quickstart", ["train.bn_l1=0.001"])
    assert recipe.train.bn_l1 == 0.001 and recipe.retrain_config().bn_l1 == 0.0


def test_scratch_b_budget():
    assert scratch_b_budget(10, 1000, 400, None) == 25
    assert scratch_b_budget(10, 1000, 400, 2.0) == 20
    assert scratch_b_budget(10, 1000, 1000, None) == 10
    with pytest.raises(ConfigError):
        scratch_b_budget(10, 1000, 0, None)


def test_l1_filter_presets_match_the_paper():
    model = build_model("vgg16", (3, 32, 32), 10)
    p = Pruner(model, method={"name": "l1_filter", "preset": "vgg16_a"}, sparsity=0.5,
               example_inputs=torch.zeros(1, 3, 32, 32))
    widths = [int(p.masks[n].reshape(p.masks[n].shape[0], -1).any(1).sum()) for n in p.masks]
    assert widths == [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256]
    a = PRESETS["resnet56_a"]()
    assert len(a) == 27 - 4 and "layers.7.conv1.weight" not in a and a["layers.0.conv1.weight"] == 0.1
    b = PRESETS["resnet56_b"]()
    assert b["layers.0.conv1.weight"] == 0.6 and b["layers.10.conv1.weight"] == 0.3 and b["layers.25.conv1.weight"] == 0.1
    assert "layers.26.conv1.weight" not in b and "layers.16.conv1.weight" not in b  # layers 54 and 34 skipped
    with pytest.raises(ConfigError, match="preset"):
        Pruner(model, method={"name": "l1_filter", "preset": "vgg99"}, sparsity=0.5,
               example_inputs=torch.zeros(1, 3, 32, 32))


def test_run_with_controls_and_compare(tmp_path, capsys):
    over = ["model.name=vgg11", "model.kwargs={widths: [8, M, 16, M, 16]}", "train.epochs=2", "train.bn_l1=0.0001",
            "prune.method=slimming", "prune.sparsity=0.5", "prune.schedule.name=oneshot", "prune.retrain.epochs=1",
            "prune.controls=[finetune, scratch_e, scratch_b, lottery_reset, guided]", "prune.scratch_b_cap=2",
            "data.train_subset=512"]
    dirs = []
    for seed in (0, 1):
        recipe = load_recipe("quickstart", over + [f"seed={seed}"])
        s = Runner(recipe, run_dir_for(recipe, tmp_path), progress=False, log=lambda m: None).run()
        dirs.append(str(run_dir_for(recipe, tmp_path)))
        c = s["controls"]
        assert set(c) == {"scratch_e", "scratch_b", "lottery_reset", "guided"}
        assert c["scratch_e"]["epochs"] == 2
        assert c["scratch_b"]["epochs"] == scratch_b_budget(2, c["scratch_b"]["flops_full"],
                                                             c["scratch_b"]["flops_pruned"], 2)
        assert c["scratch_b"]["flops_pruned"] == s["shrunk"]["flops"] < c["scratch_b"]["flops_full"]
        assert s["shrunk"]["params"] < s["params_total"]
        assert s["shrunk"]["test_acc"] == pytest.approx(s["pruned_acc"])
    assert main(["compare", *dirs, "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| quickstart: slimming 0.5 | 2 |" in out and "Scratch-B" in out
    rows = (tmp_path / "cmp" / "rethinking.csv").read_text().splitlines()
    assert len(rows) == 3
    assert main(["compare", str(tmp_path)]) == 2  # not a run folder: one line, exit 2


def test_lottery_reset_of_a_shrunk_model_with_biases(tmp_path):
    """Removed units' initial biases go with them: the reset model is the shrunk init, not a refusal."""
    recipe = load_recipe("quickstart", ["train.epochs=1", "prune.method=l1_filter", "prune.sparsity=0.5",
                                        "prune.schedule.name=oneshot", "prune.retrain.epochs=1",
                                        "prune.controls=[lottery_reset, scratch_e]"])
    s = Runner(recipe, tmp_path / "run", progress=False, log=lambda m: None, share_dense=False).run()
    assert set(s["controls"]) == {"lottery_reset", "scratch_e"} and s["shrunk"]["changed_modules"] == 3
    assert s["channels"] == {"prunable": 400, "removed": 200, "sparsity": 0.5, "blocked": {}, "untargeted": 0,
                             "heads": {"prunable": 0, "removed": 0}}


def test_grouped_convolutions_lose_channels_by_their_group_structure():
    """Into a grouped conv, channels go at the same positions in every conv group; out of it, the same number
    per conv group: then it shrinks exactly (Torch-Pruning needs both)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 16, 3))
    x = torch.randn(2, 3, 4, 4)
    p = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=x)
    into = (~p.masks["0.weight"].flatten(1).any(1)).nonzero().flatten().tolist()
    out_of = (~p.masks["2.weight"].flatten(1).any(1)).nonzero().flatten().tolist()
    assert len(into) == 4 and sorted(i % 4 for i in into[:2]) == sorted(i % 4 for i in into[2:])
    assert sum(i < 4 for i in out_of) == sum(i >= 4 for i in out_of) == 2
    small, _ = shrink(model, p.masks, x)
    assert small[2].in_channels == small[2].out_channels == 4 and small[2].groups == 2
    assert max_output_diff(model.double(), small.double(), x.double()) <= 1e-10


def test_an_architecture_is_traced_once_per_process_and_the_masks_are_the_same(monkeypatch):
    """Every round's Pruner and the summary build a channel graph of a fresh model of the same architecture:
    the groups (names and indices) come from the first trace (and the trial shrink that probes them, once);
    shrink still traces for itself."""
    import torch_pruning as tp

    from prunelab.structure import build
    from prunelab.export import shrink

    monkeypatch.setattr(build, "_TRACED", {})
    calls = []
    build = tp.DependencyGraph.build_dependency

    def counted(self, *a, **k):
        calls.append(1)
        return build(self, *a, **k)
    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counted)

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                             nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    x = torch.randn(2, 3, 8, 8)
    first = Pruner(net(0), "l1_filter", sparsity=0.5, example_inputs=x)
    again = Pruner(net(0), "l1_filter", sparsity=0.5, example_inputs=x)
    assert len(calls) == 2 and again.channels.dg is None  # the trace, and the trial shrink's
    assert all(torch.equal(first.masks[n], again.masks[n]) for n in first.masks)
    assert again.summary()["channels"] == first.summary()["channels"]
    _, widths = shrink(again.model, again.masks, x, graph=again.channels)  # traces the model it shrinks
    assert len(calls) == 3 and widths
    Pruner(net(1)[:4], "l1_filter", sparsity=0.5, example_inputs=x)  # another architecture: its own trace
    assert len(calls) == 5


class _TwoHeads(nn.Module):
    """A detector's shape: a trunk, then class scores and boxes, both outputs of the model."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.cls_score, self.bbox_pred = nn.Linear(8, 5), nn.Linear(8, 4)

    def forward(self, x):
        h = self.trunk(x)
        return {"scores": self.cls_score(h).softmax(-1), "boxes": self.bbox_pred(h)}


def test_every_layer_that_makes_an_output_stays_whole():
    """Found from what feeds the outputs, not by registration order: both predictors keep every output row,
    and the trunk is pruned (torchvision's detector and segmentation heads are found the same way)."""
    from prunelab.structure.channels import ChannelGraph
    from prunelab.inputs import output_layers

    torch.manual_seed(0)
    model, x = _TwoHeads(), torch.randn(3, 6)
    assert ChannelGraph(model, x).ignored == ["cls_score", "bbox_pred"]
    p = Pruner(model, {"name": "l1_filter"}, sparsity=0.5, schedule="manual", example_inputs=x)
    p.prune(0.5)
    assert "cls_score.weight" in p.masks  # a target (only the registration-last layer is kept dense by targets)
    assert all(bool(p.masks[n].any(1).all()) for n in ("cls_score.weight", "bbox_pred.weight") if n in p.masks)
    assert int((~p.masks["trunk.0.weight"].any(1)).sum()) == 8
    tv = pytest.importorskip("torchvision")
    seg = tv.models.segmentation.deeplabv3_mobilenet_v3_large(num_classes=3, aux_loss=True, weights=None,
                                                               weights_backbone=None)
    layers = (nn.modules.conv._ConvNd, nn.Linear)
    assert output_layers(seg, torch.randn(1, 3, 32, 32), layers) == ["classifier.4", "aux_classifier.4"]


class _SharedHead(nn.Module):
    """An FPN's shape: two levels made by their own convolutions, one head convolution called on both."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.level1, self.level2 = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.head = nn.Conv2d(6, 6, 3, padding=1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        a, b = self.out(torch.relu(self.head(self.level1(h)))), self.out(torch.relu(self.head(self.level2(h))))
        return torch.cat([a.flatten(1), b.flatten(1)], 1)


def test_a_layer_called_on_several_inputs_keeps_the_channels_it_ties():
    """The head's input channels tie both levels' output channels, which a graph traced through one call does
    not couple: those groups stay whole, the rest is pruned, and the model shrinks to the masked one's outputs."""
    from prunelab.structure.channels import ChannelGraph

    torch.manual_seed(0)
    model, x = _SharedHead(), torch.randn(2, 3, 8, 8)
    graph = ChannelGraph(model, x)
    blocked = {n for g in graph.groups if "a layer called several times" in g.blockers for n in g.producers}
    assert {"level1", "level2", "head"} <= blocked and "stem" not in blocked
    p = Pruner(model, {"name": "l1_filter"}, sparsity=0.5, schedule="manual", example_inputs=x)
    p.prune(0.5)
    removed = ~p.masks["stem.weight"].reshape(8, -1).any(1)  # whole output channels of the stem
    assert int(removed.sum()) == 4
    small, widths = shrink(model, p.masks, x, graph=p.channels)  # checked equal to the masked model inside
    assert small.stem.out_channels == 4 and small.head.in_channels == 6

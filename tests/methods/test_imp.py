"""Iterative magnitude pruning with rewinding / reinitialization."""
import pytest
import torch
from safetensors.torch import load_file

from prunelab import Pruner
from prunelab.errors import ConfigError
from prunelab.experiment import Runner, load_recipe
from prunelab.masks import Masks
from prunelab.models import build_model

BASE = ["train.epochs=2", "prune.schedule.rounds=2", "prune.retrain.epochs=0", "prune.sparsity=0.75"]


def _round_weights(d, stage):
    return load_file(str(d / "stages" / stage / "model.safetensors"))


@pytest.mark.parametrize("rewind,point", [("init", "init"), ("step", "rewind_5")])
def test_rewinding_restores_saved_values_and_keeps_pruned_zero(tmp_path, rewind, point):
    method = f"{{name: imp, rewind: {rewind}" + (", rewind_step: 5}" if rewind == "step" else "}")
    recipe = load_recipe("quickstart", BASE + [f"prune.method={method}"])
    d = tmp_path / "run"
    Runner(recipe, d, progress=False, log=lambda m: None, share_dense=False).run()
    saved = load_file(str(d / point / "model.safetensors"))
    for stage in ("round_01", "round_02"):  # no retraining: the stage holds exactly the rewound weights
        w = _round_weights(d, stage)
        masks = Masks.load(d / "stages" / stage / "masks.safetensors")
        for name, m in masks.items():
            assert torch.equal(w[name][m], saved[name][m]) and (w[name][~m] == 0).all()
        assert torch.equal(w["fc1.bias"], saved["fc1.bias"])
    assert not torch.equal(saved["fc1.weight"], load_file(str(d / "stages" / "dense" / "model.safetensors"))["fc1.weight"])


def test_reinit_draws_new_weights_and_keeps_the_mask(tmp_path):
    recipe = load_recipe("quickstart", BASE + ["prune.method={name: imp, rewind: reinit}"])
    d = tmp_path / "run"
    Runner(recipe, d, progress=False, log=lambda m: None, share_dense=False).run()
    init = load_file(str(d / "init" / "model.safetensors"))
    w1, w2 = _round_weights(d, "round_01"), _round_weights(d, "round_02")
    m2 = Masks.load(d / "stages" / "round_02" / "masks.safetensors")
    alive = m2["fc1.weight"]
    assert not torch.equal(w1["fc1.weight"][alive], w2["fc1.weight"][alive])
    assert not torch.equal(init["fc1.weight"][alive], w2["fc1.weight"][alive])
    assert (w2["fc1.weight"][~alive] == 0).all()


def test_continue_without_reset_keeps_the_trained_weights(tmp_path):
    recipe = load_recipe("quickstart", BASE + ["prune.method={name: imp, rewind: none}"])
    d = tmp_path / "run"
    Runner(recipe, d, progress=False, log=lambda m: None, share_dense=False).run()
    dense = load_file(str(d / "stages" / "dense" / "model.safetensors"))
    w = _round_weights(d, "round_01")
    m = Masks.load(d / "stages" / "round_01" / "masks.safetensors")["fc1.weight"]
    assert torch.equal(w["fc1.weight"][m], dense["fc1.weight"][m])


def test_structured_l2_prunes_whole_filters():
    model = build_model("lenet5", (1, 28, 28), 10)
    p = Pruner(model, method={"name": "imp", "criterion": "l2", "granularity": "filter"}, sparsity=0.5)
    rows = p.masks["conv2.weight"].reshape(50, -1)
    assert (rows.all(1) | ~rows.any(1)).all() and rows.any(1).sum() == 25
    norms = model.conv2.weight.detach().reshape(50, -1).norm(dim=1)
    assert norms[rows.any(1)].min() >= norms[~rows.any(1)].max()


def test_bad_rewind_options(tmp_path):
    m = build_model("lenet5", (1, 28, 28), 10)
    for bad in ({"rewind": "later"}, {"rewind": "step"}, {"rewind": "init", "rewind_step": 3}):
        with pytest.raises(ConfigError):
            Pruner(m, method={"name": "imp", **bad}, sparsity=0.5)
    recipe = load_recipe("quickstart", BASE + ["prune.method={name: imp, rewind: step, rewind_step: 100000}"])
    with pytest.raises(ConfigError, match="beyond"):
        Runner(recipe, tmp_path / "run", progress=False, log=lambda m: None, share_dense=False).run()

"""Campfire (gradual structured sparse training with frozen masks), the compact format and `prunelab attack`."""
import copy
import json

import pytest
import torch
from torch import nn

from prunelab import CheckpointError, ConfigError, Masks, Pruner
from prunelab.cli import main
from prunelab.experiment import Runner, load_recipe, run_dir_for
from prunelab.export import compact_bytes, load_compact, save_compact


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3),
                         nn.Flatten(), nn.Linear(12 * 2 * 2, 10))


def test_campfire_keeps_first_and_last_dense_and_freezes():
    model = _cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner = Pruner(model, {"name": "campfire", "granularity": "window"},
                    schedule={"name": "cubic", "start": 0, "end": 6, "frequency": 2}, sparsity=5 / 9)
    assert list(pruner.params) == ["2.weight", "4.weight"]
    frozen = None
    for step in range(12):
        opt.zero_grad()
        model(torch.randn(4, 2, 8, 8)).sum().backward()
        opt.step()
        pruner.step(opt)
        if step == 5:
            frozen = pruner.masks.clone()
        for m in pruner.masks.values():  # every kernel keeps the same count at every event
            counts = m.flatten(2).sum(2)
            assert counts.min() == counts.max()
    assert frozen.equal(pruner.masks)  # no change after the freeze point
    assert all(m.flatten(2).sum(2).eq(4).all() for m in pruner.masks.values())
    assert pruner.schedule.events()[1] == (2, pytest.approx(5 / 9 * (1 - (1 - 2 / 6) ** 3)))


def test_combined_reaches_its_split_and_refuses_linear_layers():
    model = _cnn()
    p = Pruner(model, {"name": "campfire", "granularity": {"name": "combined", "kernel_share": 0.5}},
               sparsity=0.5)
    for m in p.masks.values():
        kernels = m.flatten(2).any(2)
        assert kernels.sum(1).eq(6).all()                    # s_k = 0.25 of 8 kernels per filter: 6 kept
        assert m.flatten(2).sum(2)[kernels].eq(6).all()      # s_w = 1 - 0.5 / 0.75 inside: 6 of 9 kept
    lin = Pruner(nn.Sequential(nn.Linear(16, 4)), {"name": "magnitude", "granularity": "combined"}, sparsity=0.5)
    runs = lin.masks["0.weight"].reshape(4, 4, 4)        # rows x runs of 4 inputs x 4
    assert runs.any(2).sum(1).eq(3).all() and runs.sum(2)[runs.any(2)].eq(3).all()
    with pytest.raises(ConfigError, match="divisible"):
        Pruner(nn.Sequential(nn.Linear(6, 4)), {"name": "magnitude", "granularity": "combined"}, sparsity=0.5)


@pytest.mark.parametrize("gran,fmt", [("element", "bitmask"), ("window", "bitmask"), ("filter", "filter"),
                                      ({"name": "kernel", "per_filter": True}, "kernel")])
def test_compact_format_roundtrips_exactly(gran, fmt, tmp_path):
    model = _cnn()
    p = Pruner(model, {"name": "campfire", "granularity": gran, "keep_last_dense": False}, sparsity=0.5)
    size, formats = compact_bytes(model, p.masks)
    assert {f for n, f in formats.items() if n != "6.weight"} == {fmt}  # the linear layer has no kernels
    path = tmp_path / "c.safetensors"
    assert save_compact(model, p.masks, path) == size == path.stat().st_size
    state, masks = load_compact(path)
    assert masks.equal(p.masks)
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)
    restored = copy.deepcopy(model)
    restored.load_state_dict(state)
    x = torch.randn(2, 2, 8, 8)
    assert torch.equal(restored(x), model(x))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError):
        load_compact(path)


def test_compact_is_smaller_than_dense_at_high_sparsity():
    model = nn.Sequential(nn.Linear(400, 400))
    p = Pruner(model, "magnitude", sparsity=0.95)
    size, _ = compact_bytes(model, p.masks)
    assert size < 0.2 * 400 * 400 * 4


def test_campfire_recipe_runs_and_attack_command(tmp_path, capsys):
    over = ["prune.method={name: campfire, granularity: window, keep_first_dense: false}", "train.epochs=0",
            "prune.sparsity=0.5", "prune.schedule.name=cubic", "prune.schedule.end_epoch=1",
            "prune.schedule.frequency_steps=5", "prune.retrain.epochs=2", "model.name=lenet300_100"]
    recipe = load_recipe("quickstart", over)
    run = run_dir_for(recipe, tmp_path)
    s = Runner(recipe, run, progress=False, log=lambda m: None).run()
    assert s["dense_acc"] is None and s["stages"][-1]["stage"] == "gradual"
    assert s["bytes_compact_file"] < s["bytes_dense_file"]
    assert main(["attack", str(run), "--eps", "0.1", "--samples", "50", "--steps", "3"]) == 0
    out = json.loads((run / "attack.json").read_text())
    assert [r["model"] for r in out["results"]] == ["sparse"] and "pgd@0.1" in out["results"][0]
    assert main(["attack", str(tmp_path), "--eps", "0.1"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_compact_of_unpruned_tensor_is_dense(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8))
    masks = Masks.dense(dict(model.named_parameters()) | {})
    masks = Masks({"0.weight": masks["0.weight"]})
    size, formats = compact_bytes(model, masks)
    assert formats == {"0.weight": "dense"}
    save_compact(model, masks, tmp_path / "d.safetensors")
    state, back = load_compact(tmp_path / "d.safetensors")
    assert torch.equal(state["0.weight"], model[0].weight) and back.equal(masks)

"""FSDP2 (train.parallel: fsdp) inside this process: one gloo rank, so the sharded code paths (DTensor
parameters, local masks, gathered state) run without a launcher; tests/e2e/test_distributed_sweep.py runs two."""
import copy

import pytest
import torch
import torch.distributed as dist

from prunelab import Pruner
from prunelab.analysis.flops import count_params
from prunelab.experiment.checkpoint import load_checkpoint, save_checkpoint
from prunelab.models import build_model
from prunelab.training.parallel import blocks, by_index, full_state, is_sharded, shard

transformers = pytest.importorskip("transformers")

KW = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=16)


@pytest.fixture
def one_rank():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _train(model, pruner, batches):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for x in batches:
        opt.zero_grad(set_to_none=True)
        model(x).logits.float().logsumexp(-1).mean().backward()
        pruner.after_backward()
        opt.step()
        pruner.step(opt)
    return opt


def test_sharded_training_keeps_masks_and_saves_what_one_process_saves(one_rank, tmp_path):
    plain = build_model("hf:llama", (16,), 64, seed=0, **KW)
    sharded = copy.deepcopy(plain)
    batches = [torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    pruners = []
    for model in (plain, sharded):
        p = Pruner(model, "magnitude", schedule="manual", sparsity=0.5)
        p.prune(0.5)
        pruners.append(p)
    assert [type(b).__name__ for b in blocks(sharded)] == ["LlamaDecoderLayer"] * 2
    shard(sharded)
    pruners[1].rebind()
    assert is_sharded(sharded) and not is_sharded(plain)
    assert type(pruners[1].params["model.layers.0.mlp.up_proj.weight"]).__name__ == "DTensor"
    opts = [_train(m, p, batches) for m, p in zip((plain, sharded), pruners)]

    weights, state = full_state(sharded, opts[1])
    ref = plain.state_dict()
    assert list(weights) == list(ref)
    for k, v in ref.items():
        torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-6)
    for name, m in pruners[1].masks.items():  # pruned weights exactly zero, and their Adam moments
        assert not weights[name][~m].any()
    ref_opt = opts[0].state_dict()
    assert state["param_groups"] == ref_opt["param_groups"] and state["state"].keys() == ref_opt["state"].keys()
    for i, s in ref_opt["state"].items():
        torch.testing.assert_close(state["state"][i]["exp_avg"], s["exp_avg"], rtol=1e-5, atol=1e-6)
    assert count_params(sharded) == count_params(plain)

    # the gathered state is a checkpoint a single process resumes: weights and optimizer state load back
    save_checkpoint(tmp_path / "ck", weights, pruners[1].masks, state)
    fresh = build_model("hf:llama", (16,), 64, seed=1, **KW)
    opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    masks, _ = load_checkpoint(tmp_path / "ck", fresh, opt, restore_rng=False)
    assert all(torch.equal(masks[n], pruners[0].masks[n]) for n in masks)
    torch.testing.assert_close(fresh.state_dict()["lm_head.weight"], ref["lm_head.weight"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.state_dict()["state"][0]["exp_avg_sq"], ref_opt["state"][0]["exp_avg_sq"],
                               rtol=1e-5, atol=1e-9)


def test_by_index_orders_names_as_the_parameter_groups():
    state = {"state": {"b": {"step": 1}, "a": {"step": 2}},
             "param_groups": [{"lr": 0.1, "params": ["a"]}, {"lr": 0.2, "params": ["c", "b"]}]}
    assert by_index(state) == {"state": {2: {"step": 1}, 0: {"step": 2}},
                               "param_groups": [{"lr": 0.1, "params": [0]}, {"lr": 0.2, "params": [1, 2]}]}
    assert by_index({}) == {}


@pytest.mark.parametrize("override, words", [
    ("prune.schedule={name: cubic, start_epoch: 0, end_epoch: 1}", "cubic schedule prunes while training"),
    ("prune.method={name: magnitude, criterion: taylor}", "gradients gathered while retraining")])
def test_sharded_retraining_refuses_decisions_during_training(tmp_path, capsys, override, words):
    from prunelab.cli import main

    args = ["run", "quickstart", override, "prune.retrain.parallel=fsdp", "train.epochs=0", "--runs-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and "parallel ddp" in err and "Traceback" not in err
    assert main(args[:3] + ["prune.retrain.parallel=ddp", "--stop-after", "dense"] + args[4:]) == 0

"""Calibration from disk: a model folder opened with its weights on disk, pruned block by block, written to a
folder plain transformers loads, with the masks and weights of the in-memory path."""
import json

import pytest
import torch

from prunelab import Pruner
from prunelab.errors import ConfigError

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from prunelab.calibration.disk import INDEX, open_on_disk  # noqa: E402

SMALL = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
             max_position_embeddings=32)
FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(intermediate_size=48, **SMALL)),
    "llama-tied": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        intermediate_size=48, tie_word_embeddings=True, **SMALL)),
    # experts stored per expert in the files and fused in the model: transformers converts them on load
    "qwen3-moe": lambda: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        intermediate_size=48, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, head_dim=8, **SMALL)),
}
BATCHES = [torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(4)]


def _folder(tmp_path, family="llama"):
    torch.manual_seed(0)
    src = tmp_path / f"{family}-src"
    FAMILIES[family]().save_pretrained(src)
    (src / "tokenizer_config.json").write_text("{}")
    return src


def _loaded_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)


@pytest.mark.parametrize("family, method", [("llama", "wanda"), ("llama", "sparsegpt"), ("llama-tied", "wanda"),
                                            ("qwen3-moe", "wanda")])
def test_pruned_from_disk_block_by_block_equals_the_in_memory_path(tmp_path, family, method):
    src = _folder(tmp_path, family)
    ref = transformers.AutoModelForCausalLM.from_pretrained(src)
    mem = Pruner(ref, method, sparsity=0.5, schedule="manual")
    mem.calibrate(BATCHES, samples=16)
    mem.prune(0.5)

    model, disk = open_on_disk(src, tmp_path / "out")
    assert all(p.is_meta for p in model.parameters())
    layers = model.model.layers
    block = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in layers)
    outside = sum(p.numel() * p.element_size() for p in model.parameters()) - sum(
        p.numel() * p.element_size() for b in layers for p in b.parameters())
    held = []
    pruner = Pruner(model, method, sparsity=0.5, schedule="manual")
    pruner.calibrate(BATCHES, samples=16, offload=disk, progress=lambda line: held.append(_loaded_bytes(model)))
    pruner.prune(0.5)
    assert len(held) == 3 and max(held) <= block + outside  # one block in memory at a time, besides the embeddings
    assert all(p.is_meta for p in model.parameters())  # nothing left in memory after the event
    assert all(torch.equal(mem.masks[n], pruner.masks[n]) for n in mem.masks)
    acc = pruner.accounting()["all_weights"]
    assert acc["unread_counted_nonzero"] > 0 and acc["params"] == mem.accounting()["all_weights"]["params"]

    out = disk.finish()
    assert (out / "tokenizer_config.json").is_file() and not list(out.glob("model.safetensors"))
    assert sorted(json.loads((out / INDEX).read_text())["weight_map"]) == sorted(dict(model.named_parameters()))
    back = transformers.AutoModelForCausalLM.from_pretrained(out)
    mine, theirs = back.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_disk_refusals(tmp_path):
    src = _folder(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        open_on_disk(src, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    model, disk = open_on_disk(src, tmp_path / "out")
    for method in ("magnitude", {"name": "wanda", "sequential": False}):  # decisions that need every weight at once
        with pytest.raises(ConfigError, match="meta device .* sequential method"):
            Pruner(model, method, sparsity=0.5, schedule="manual")
    with pytest.raises(ConfigError, match="block by block: use a sequential method"):
        p = Pruner(model, "wanda", sparsity=0.5, schedule="manual")
        p.calibrate(BATCHES, samples=8, offload=disk, sequential_targets=["model.norm"])
        p.prune(0.5)
    p = Pruner(model, "wanda", sparsity=0.5, schedule="manual")
    with pytest.raises(ConfigError, match="open_on_disk with offload="):
        p.calibrate(BATCHES, samples=8)
        p.prune(0.5)
    with pytest.raises(ConfigError, match="offload is the DiskWeights"):
        p.calibrate(BATCHES, samples=8, offload="disk")
    disk.close()


def test_prune_disk_command_writes_a_folder_transformers_loads(tmp_path, capsys):
    from prunelab.cli import main

    torch.manual_seed(0)
    src = tmp_path / "src"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        intermediate_size=48, **{**SMALL, "vocab_size": 256})).save_pretrained(src)
    out = tmp_path / "out"
    assert main(["prune-disk", str(src), "--out", str(out), "--method", "sparsegpt", "--samples", "8",
                 "--seq-len", "16"]) == 0
    printed = capsys.readouterr().out
    assert "calibrated and pruned model.layers.2 (3/3" in printed and "sparsity 0.5000 over the" in printed
    back = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert float((back.model.layers[1].mlp.up_proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    # prune, then quantize on load (transformers' TorchAoConfig, weight-only int8 / int4): pruned zeros stay zero
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    pruned = back.model.layers[1].mlp.up_proj.weight.detach() == 0
    x = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    for config in (Int8WeightOnlyConfig(), IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(16))):
        q = transformers.AutoModelForCausalLM.from_pretrained(out, quantization_config=transformers.TorchAoConfig(config))
        w = q.model.layers[1].mlp.up_proj.weight
        assert type(w).__name__ != "Parameter" and not w.dequantize()[pruned].any()
        with torch.no_grad():
            assert (q(x).logits - back(x).logits).abs().max() < 0.05
    for bad, words in ((["--method", "magnitude"], "block by block"), (["--sparsity", "1.5"], "sparsity"),
                       (["--samples", "0"], "--samples")):
        assert main(["prune-disk", str(src), "--out", str(tmp_path / "x"), *bad]) == 2
        assert words in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["prune-disk", str(src), "--out", str(out)]) == 2  # an existing model is never overwritten
    assert "not an empty folder" in capsys.readouterr().err


def test_a_failed_run_takes_back_only_its_own_files(tmp_path):
    src = _folder(tmp_path)
    for given in (False, True):  # an output folder this run makes, and an empty one the user made
        out = tmp_path / f"out-{given}"
        if given:
            out.mkdir()
        model, disk = open_on_disk(src, out)
        pruner = Pruner(model, "wanda", sparsity=0.5, schedule="manual")
        pruner.calibrate(BATCHES, samples=8, offload=disk)
        pruner.prune(0.5)
        assert list(out.glob("weights-model.layers.*.safetensors"))
        if given:
            (out / "notes.txt").write_text("mine")  # a user's file, arrived meanwhile
        disk.discard()
        assert (sorted(p.name for p in out.iterdir()) == ["notes.txt"]) if given else not out.exists()

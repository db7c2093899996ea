"""Units of structure in Hugging Face transformer blocks: chosen whole, shrunk into the same transformers class with
a smaller config, equal to the masked model, loaded by plain transformers in a process without prunelab."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunelab import ConfigError, Pruner
from prunelab.export import shrink
from prunelab.structure.surgery import ShrinkError
from prunelab.models.hf import save_pretrained

transformers = pytest.importorskip("transformers")

from tiny_transformers import V, ids as _x, pruned as _pruned  # noqa: E402


def _model(kind: str, layers: int = 3, **kw) -> nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=V, n_embd=32, n_head=4, n_layer=layers, n_positions=32, **kw)
    elif kind == "opt":
        config = transformers.OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=48, num_attention_heads=4,
                                        num_hidden_layers=layers, word_embed_proj_dim=32, max_position_embeddings=32,
                                        **kw)
    elif kind == "bert":  # an encoder with a masked-LM head: found under its base model's prefix
        config = transformers.BertConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                         num_hidden_layers=layers, max_position_embeddings=32, **kw)
        model = transformers.BertForMaskedLM(config)
        return _biased(model)
    elif kind == "gpt_neox":
        config = transformers.GPTNeoXConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                            num_hidden_layers=layers, max_position_embeddings=32, **kw)
    else:
        if kind == "mixtral":
            kw = {"num_local_experts": 4, "num_experts_per_tok": 2, **kw}
        if kind == "qwen2_moe":  # routed experts and a shared one
            kw = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
                  "shared_expert_intermediate_size": 24, **kw}
        if kind in ("phi3", "gemma2"):  # token ids inside the vocabulary; a head size that fits the width
            kw = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "head_dim": 8, **kw}
        config = transformers.AutoConfig.for_model(kind, vocab_size=V, hidden_size=32, intermediate_size=48,
                                                   num_attention_heads=4, num_key_value_heads=2,
                                                   num_hidden_layers=layers, **kw)
    return _biased(transformers.AutoModelForCausalLM.from_config(config))


def _biased(model: nn.Module) -> nn.Module:
    model.config.use_cache = False
    with torch.no_grad():  # biases (Qwen2's q/k/v, GPT-2's, OPT's) away from zero, so a missed one shows
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


CASES = [("llama", ["mlp", "heads", "hidden", "depth"]), ("qwen2", ["mlp", "heads", "hidden"]),
         ("mistral", ["heads", "depth"]), ("qwen3", ["mlp", "heads", "depth"]), ("gpt2", ["mlp", "depth"]),
         ("opt", ["mlp", "depth"]), ("gemma2", ["mlp", "heads", "depth"]), ("phi3", ["mlp", "heads", "hidden"]),
         ("gpt_neox", ["mlp", "depth"]), ("bert", ["mlp"]), ("mixtral", ["heads", "hidden", "depth"]),
         ("qwen2_moe", ["heads", "hidden"])]


# the config field each unit changes, and its width before: (model type, unit), else the LLaMA-style default
FIELDS = {"mlp": ("intermediate_size", 48), "heads": ("num_key_value_heads", 2), "hidden": ("hidden_size", 32),
          "depth": ("num_hidden_layers", 3), ("gpt2", "mlp"): ("n_inner", 128), ("gpt2", "depth"): ("n_layer", 3),
          ("opt", "mlp"): ("ffn_dim", 48)}


@pytest.mark.subprocess
def test_each_unit_at_half_shrinks_saves_and_loads_without_prunelab(tmp_path):
    expected = {}
    for kind, units in CASES:
        for unit in units:
            model = _model(kind)
            pruner = _pruned(model, [unit])
            small, changed = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
            assert type(small) is type(model)
            field, full = FIELDS.get((kind, unit)) or FIELDS[unit]
            assert changed[field] == (2 if unit == "depth" else full // 2), (kind, unit, changed)
            if unit == "heads":  # the query-per-kv ratio is kept: 4 heads in 2 groups -> 2 heads in 1
                assert changed["num_attention_heads"] == 2
                assert small.config.head_dim == (getattr(model.config, "head_dim", None) or 8)  # kept
            if unit == "hidden":  # RMSNorm's eps scaled by N / n (see prunelab.structure.units)
                assert changed["rms_norm_eps"] == pytest.approx(model.config.rms_norm_eps * 2)
            folder = tmp_path / f"{kind}-{unit}"
            save_pretrained(small, folder)
            if kind in ("mixtral", "qwen2_moe"):  # transformers' grouped-matmul experts have no float64 kernel; its loop has
                model.config._experts_implementation = "eager"
            with torch.no_grad():  # the masked model's logits, which the loaded folder must reproduce
                expected[str(folder)] = (type(small).__name__, model.double()(_x(2, 5)).logits.tolist())
    script = ("import json, sys, torch, transformers\n"
              "out = {}\n"
              "for folder, cls in json.load(sys.stdin):\n"
              "    m = getattr(transformers, cls).from_pretrained(folder, local_files_only=True).double().eval()\n"
              "    m.config._experts_implementation = 'eager'  # its grouped matmul has no float64 kernel\n"
              f"    x = torch.tensor({_x(2, 5).tolist()})\n"
              "    out[folder] = m(x).logits.tolist()\n"
              "assert not any(k.startswith('prunelab') for k in sys.modules)\n"
              "print(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", script], input=json.dumps([(f, c) for f, (c, _) in expected.items()]),
                         capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for folder, (_, logits) in expected.items():
        diff = (torch.tensor(got[folder]) - torch.tensor(logits)).abs().max().item()
        assert diff <= 1e-5, (folder, diff)


def test_rms_norm_over_the_kept_channels_by_hand():
    """RMSNorm over N channels of which N - n are zero equals RMSNorm over the n kept, gain * sqrt(N / n),
    eps * N / n."""
    N, n, eps = 6, 4, 1e-2
    x = torch.tensor([[0.5, -1.0, 0.0, 2.0, 0.0, 1.5]], dtype=torch.float64)
    g = torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0, -1.0], dtype=torch.float64)
    keep = torch.tensor([0, 1, 3, 5])
    full = g * x / torch.sqrt(x.square().sum() / N + eps)
    small = g[keep] * (N / n) ** 0.5 * x[:, keep] / torch.sqrt(x[:, keep].square().sum() / n + eps * N / n)
    assert torch.allclose(full[:, keep], small, rtol=0, atol=1e-15)
    assert full[:, keep].tolist() != (g[keep] * x[:, keep] / torch.sqrt(x[:, keep].square().sum() / n + eps)).tolist()


def test_tied_embeddings_lose_the_same_hidden_channels():
    model = _model("llama", tie_word_embeddings=True)
    pruner = _pruned(model, ["hidden"], criterion="activation")
    small, changed = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
    assert changed["hidden_size"] == 16 and small.lm_head.weight is small.model.embed_tokens.weight
    assert small.lm_head.weight.shape == (V, 16)


def test_depth_keeps_generate_working_with_its_cache():
    model = _model("llama", layers=4)
    pruner = _pruned(model, ["depth"])
    small, changed = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
    assert changed["num_hidden_layers"] == 2
    assert [layer.self_attn.layer_idx for layer in small.model.layers] == [0, 1]  # renumbered for the cache
    small.config.use_cache = model.config.use_cache = True
    x = _x(1)
    with torch.no_grad():
        a = model.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0)
        b = small.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_activation_scores_are_the_mean_input_magnitude_by_hand():
    lin = nn.Sequential(nn.Linear(3, 2, bias=False))
    pruner = Pruner(lin, {"name": "magnitude", "criterion": "activation"}, schedule="manual", sparsity=0.5)
    pruner.calibrate([torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]])])
    from prunelab.engine.criteria import CRITERIA, Context
    from prunelab.calibration import input_stats

    stats = input_stats(lin, pruner.params, [torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]])], 2,
                        kinds=("mean_abs",))
    s = CRITERIA.build("activation").scores(pruner.params, Context(input_stats=stats))["0.weight"]
    assert s.tolist() == [[2.0, 1.0, 0.5], [2.0, 1.0, 0.5]]


def test_activation_and_taylor_choose_differently_from_magnitude():
    model = _model("llama")
    chosen = {}
    for crit in ("magnitude", "activation", "taylor"):
        model = _model("llama")
        method = {"name": "transformer_units", "units": ["mlp"], "criterion": crit}
        pruner = Pruner(model, method, schedule="manual", sparsity=0.5, example_inputs=_x(1))
        if pruner.needs.calibration is not None:
            pruner.calibrate([_x(4, s) for s in range(3)])
        for i in range(pruner.needs.gradient_batches):
            model.zero_grad()
            out = model(_x(4, i), labels=_x(4, i))
            out.loss.backward()
            pruner.after_backward()
        pruner.prune(0.5, final=True)
        chosen[crit] = pruner.masks["model.layers.0.mlp.down_proj.weight"].any(0)
        assert int(chosen[crit].sum()) == 24
    assert not torch.equal(chosen["magnitude"], chosen["activation"])
    assert not torch.equal(chosen["magnitude"], chosen["taylor"])


@pytest.mark.parametrize("kind,method,match", [
    ("gpt2", {"units": ["heads"]}, "derives the head size from hidden_size / heads"),
    ("opt", {"units": ["hidden"]}, "LayerNorm's mean and variance change"),
    ("qwen3", {"units": ["hidden"]}, "shares rms_norm_eps"),
    ("gemma2", {"units": ["hidden"]}, "scales its embeddings by sqrt"),
    ("mixtral", {"units": ["mlp"]}, "is its experts: remove whole experts with units"),
    ("llama", {"units": ["mlp"], "allocation": "global"}, "would give blocks different counts of mlp units"),
    ("mixtral", {"units": ["experts"], "allocation": "global", "expert_score": "criterion"},
     "different counts of experts units"),
    ("llama", {"units": ["width"]}, "units are a list of distinct"),
    ("opt", {"units": ["depth"]}, "has do_layer_norm_before false"),
    ("bert", {"units": ["depth"]}, "normalizes after each residual add"),
])
def test_bad_units_are_one_sentence_before_pruning(kind, method, match):
    model = _model(kind, **({"do_layer_norm_before": False} if "do_layer_norm_before" in match else {}))
    with pytest.raises(ConfigError, match=match):
        Pruner(model, {"name": "transformer_units", **method}, sparsity=0.5, schedule="manual", example_inputs=_x(1))


def test_units_on_a_model_without_a_known_layout_are_refused():
    with pytest.raises(ConfigError, match="known layout"):
        Pruner(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "transformer_units", sparsity=0.5,
               schedule="manual", example_inputs=torch.randn(1, 4))


def test_uneven_widths_from_hand_made_masks_are_refused_by_shrink():
    model = _model("llama")
    pruner = _pruned(model, ["mlp"])
    masks = dict(pruner.masks)
    masks["model.layers.0.mlp.down_proj.weight"] = torch.ones_like(masks["model.layers.0.mlp.down_proj.weight"])
    masks["model.layers.0.mlp.gate_proj.weight"] = torch.ones_like(masks["model.layers.0.mlp.gate_proj.weight"])
    masks["model.layers.0.mlp.up_proj.weight"] = torch.ones_like(masks["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(ConfigError, match="different mlp widths"):
        shrink(model, masks, _x(1), graph=pruner.channels)


def test_a_companion_left_alive_is_caught_by_the_check():
    model = _model("llama")
    pruner = _pruned(model, ["hidden"])
    gone = pruner.channels.removed(pruner.masks)["hidden"]
    assert float(model.model.embed_tokens.weight.detach()[:, gone].abs().sum()) == 0.0  # held at zero by the pruner
    with torch.no_grad():  # set back: the removed channels now carry the embedding, the masked model differs
        model.model.embed_tokens.weight[:, gone] = 1.0
    with pytest.raises(ShrinkError, match="differ from the masked model's"):
        shrink(model, pruner.masks, _x(1), graph=pruner.channels)


def test_l1_filter_on_a_llama_uses_the_block_layout_and_is_quick():
    import time

    model = _model("llama")
    t0 = time.perf_counter()
    pruner = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=_x(1))
    small, changed = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
    assert changed["intermediate_size"] == 24 and changed["num_key_value_heads"] == 1
    assert time.perf_counter() - t0 < 60  # a trace of the same model did not finish in 100-300 s


TINY_LLAMA = ["model.kwargs={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 48, num_attention_heads: 4, "
              "num_key_value_heads: 2, max_position_embeddings: 16}", "data.seq_len=16", "data.train_tokens=4000",
              "data.eval_tokens=2000", "data.calibration_tokens=2000", "train.epochs=1",
              "prune.method.criterion.samples=16"]


def test_a_units_recipe_end_to_end_exports_the_smaller_config(tmp_path, capsys):
    from prunelab.cli import main

    assert main(["run", "llama_pystdlib_units", *TINY_LLAMA, "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    run = next(p for p in tmp_path.iterdir() if p.name.startswith("llama_pystdlib_units"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["shrunk"]["config"] == {"intermediate_size": 24, "num_attention_heads": 2, "num_key_value_heads": 1}
    assert summary["shrunk"]["test_ppl"] == pytest.approx(summary["pruned_ppl"], rel=1e-5)  # the same model
    assert summary["channels"]["units"]["mlp"]["kept"] == [24, 24]
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "small")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "small"), local_files_only=True)
    assert back.config.intermediate_size == 24 and back.config.num_key_value_heads == 1
    assert main(["export", str(run), "--format", "shrunk", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "export it with --format hf" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    pytest.importorskip("torchao")
    for _ in range(2):  # quantized into the run's own export folder, the second time replacing the first
        assert main(["export", str(run), "--format", "hf", "--quantize", "int8"]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(str(run / "export" / "model.hf"))
    assert type(back.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"


def test_bad_units_in_a_recipe_exit_2_before_anything_is_written(tmp_path, capsys):
    from prunelab.cli import main

    bad = TINY_LLAMA[1:] + ["model.name=hf:gpt2", "model.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 16}",
                            "prune.method.units=[heads]"]
    assert main(["run", "llama_pystdlib_units", *bad, "--runs-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "derives the head size" in err and "Traceback" not in err
    assert not any(p.name.startswith("llama_pystdlib_units") for p in tmp_path.iterdir())


def test_depth_by_block_influence_by_hand():
    """ShortGPT: a block's influence is 1 - mean over tokens of cos(its input, its output); the least
    influential blocks go."""
    model = _model("llama", layers=4)
    with torch.no_grad():  # blocks that change their input by very different amounts
        for layer, scale in zip(model.model.layers, (30.0, 0.05, 3.0, 0.5)):
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
    seen = {}
    def keep(i):
        def hook(m, a, o):
            seen[i] = (a[0], o if torch.is_tensor(o) else o[0])
        return hook
    hooks = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(model.model.layers)]
    x = _x(3, 7)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    by_hand = [1 - torch.nn.functional.cosine_similarity(a.reshape(-1, 32).double(), o.reshape(-1, 32).double())
               .mean().item() for a, o in (seen[i] for i in range(4))]
    from prunelab.calibration import input_stats
    from prunelab.structure.units import block_influence

    stats = input_stats(model, {"model.layers.0.mlp.up_proj.weight": model.model.layers[0].mlp.up_proj.weight},
                        [x], 3, kinds=("influence",))
    assert block_influence("model.layers", 4, stats).tolist() == pytest.approx(by_hand, abs=1e-6)
    pruner = Pruner(model, {"name": "transformer_units", "units": ["depth"], "criterion": "magnitude"},
                    schedule="manual", sparsity=0.5, example_inputs=_x(1))
    pruner.calibrate([x])
    pruner.prune(0.5)
    lowest = sorted(range(4), key=lambda i: by_hand[i])[:2]
    assert pruner.channels.removed(pruner.masks)["model.layers"].tolist() == sorted(lowest)
    assert sorted(lowest) == [1, 3]


def test_rounds_nest_and_the_last_round_shrinks():
    model = _model("llama")
    pruner = Pruner(model, {"name": "transformer_units", "units": ["mlp", "hidden"], "criterion": "magnitude"},
                    sparsity=0.75, schedule={"name": "iterative", "rounds": 2, "interval": 1}, example_inputs=_x(1))
    first = {n: m.clone() for n, m in pruner.masks.items()}
    assert pruner.summary()["channels"]["units"]["mlp"]["kept"] == [24, 24, 24]  # 0.5 after the first round
    pruner.step()
    units = pruner.summary()["channels"]["units"]
    assert units["mlp"]["kept"] == [12, 12, 12] and units["hidden"]["kept"] == [8]
    assert all(not (pruner.masks[n] & ~first[n]).any() for n in first)  # nothing pruned comes back
    _, changed = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
    assert changed["intermediate_size"] == 12 and changed["hidden_size"] == 8
